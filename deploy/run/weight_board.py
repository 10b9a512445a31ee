"""Weight broadcast through the Ray object store: one `ray.put` per version, a board that names it.

The learner puts each versioned blob into the object store once and posts the reference to a tiny
`WeightBoard` actor, which re-puts it so that the board, not the learner, owns the published object:
a learner process that dies (and is restarted from a checkpoint) does not take the weights the actors
and the evaluator are about to fetch with it. Actors ask the board whether a newer version exists and,
if so, fetch the object from the store (from the nearest node holding a copy), never a copy sent per
request by the learner.
"""

from __future__ import annotations

from typing import Any

import ray


class WeightBoard:
    """Holds the newest (version, [ObjectRef]); wrapping the ref in a list stops Ray resolving it."""

    def __init__(self) -> None:
        self._version = 0
        self._ref: list[ray.ObjectRef] | None = None

    def publish(self, version: int, ref: list[ray.ObjectRef]) -> None:
        if version > self._version:
            # Owned here: objects die with their owner, and the learner may die and be restarted.
            if isinstance(ref[0], ray.ObjectRef):
                ref = [ray.put(ray.get(ref[0]))]
            self._version, self._ref = version, ref

    def version(self) -> int:
        """The newest published version (a restarted learner continues above it)."""
        return self._version

    def latest(self, have_version: int) -> tuple[int, list[ray.ObjectRef]] | None:
        if self._ref is None or self._version <= have_version:
            return None
        return self._version, self._ref


BOARD_NAME = "slac-weight-board"


def start_board() -> Any:
    """The run's board, as a Ray actor that Ray restarts whenever its process dies: empty then until the learner's
    next publication refills it; calls made meanwhile wait for it (every one of them is idempotent)."""
    return ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(WeightBoard).options(name=BOARD_NAME).remote()


def _board(name: str) -> Any:
    # Looked up by name inside each process: passing the handle as a constructor argument would
    # pin it in the object store, which Ray warns makes restartable actors fragile.
    return ray.get_actor(name)


class RayWeightPublisher:
    """The learner's side: `ray.put` runs in the learner process, which then owns the object."""

    def __init__(self, board_name: str = BOARD_NAME, floor: int = 0) -> None:
        self.board_name, self.floor = board_name, floor
        self._current: ray.ObjectRef | None = None
        self._sent: ray.ObjectRef | None = None

    @property
    def board(self) -> Any:
        return _board(self.board_name)

    def publish(self, version: int, blob: dict[str, Any]) -> None:
        """Put `blob` in the object store and tell the board, without waiting for its answer: the learner's loop
        goes on (a wait for the board's process to be scheduled took 5 % of a 2-core learner's time). The previous
        publication's answer is collected here, so a failure still surfaces, one publication later."""
        if self._sent is not None:
            ray.get(self._sent)
        self._current = ray.put(blob)  # keep a reference until the next version replaces it
        self._sent = self.board.publish.remote(version, [self._current])

    def version(self) -> int:
        """The newest version the actors may already hold: the board's, or `floor` (the newest the driver saw
        the learner and the actors report) when that is higher: a board that was restarted starts empty."""
        return max(self.floor, int(ray.get(self.board.version.remote())))


class RayWeightSource:
    """The actors' side: asks the board, fetches from the object store only when newer."""

    def __init__(self, board_name: str = BOARD_NAME) -> None:
        self.board_name = board_name
        self._board: Any = None

    @property
    def board(self) -> Any:
        if self._board is None:
            self._board = _board(self.board_name)
        return self._board

    def latest(self, have_version: int) -> dict[str, Any] | None:
        found = ray.get(self.board.latest.remote(have_version))
        if found is None:
            return None
        _, (ref,) = found
        try:
            return ray.get(ref)
        except (ray.exceptions.OwnerDiedError, ray.exceptions.ObjectLostError):
            return None  # the board died with the object it owned; its next publication replaces it
