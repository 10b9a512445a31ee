"""One training run, from its command line to its summary (`make train`): launch.py resolves the run (config.py),
opens its directory (run_dir.py; its file names: common/run_files.py), starts Ray (ray_runtime.py) and Redis, and hands over to
the driver (driver.py), whose loop asks its parts each tick: fleet.py, supervisor.py, signals.py, weight_board.py,
evaluation_schedule.py, checkpoint_schedule.py, disk.py, forecast.py, progress.py and logger.py; the counters it
saves in each checkpoint are run_state.py's.

May import common/, replay_service/, learner/, actors/; never deploy's other rooms.
"""
