"""Worker processes: who this process is among them, its share of each chunk, and starting
them through accelerate's launcher. Their results meet again in the work directory
(workdir.py), by row id."""

from __future__ import annotations

import heapq
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

from adpulse_batch.errors import Terminated
from adpulse_batch.plan import ChunkPlan, PlannedPrompt


@dataclass(frozen=True)
class Workers:
    """This process's place among the run's worker processes (one, unless launched)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def current_workers(*, cpu: bool) -> Workers:
    """Workers as `accelerate launch` (torchrun underneath) set them up; one when not launched."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Workers()
    from accelerate import PartialState

    state = PartialState(cpu=cpu)  # cpu: gloo between CPU processes instead of NCCL
    return Workers(state.process_index, state.num_processes, state.local_process_index)


def share(plan: ChunkPlan, workers: Workers, *, new_tokens: int) -> tuple[list[PlannedPrompt], dict[int, str]]:
    """This worker's prompts and skipped rows of a chunk.

    A prompt costs its tokens plus the tokens generated after it. Prompts are dealt costliest
    first to the worker with the least cost so far, so workers finish a chunk together. Every
    worker computes the same deal from the same plan: no messages are needed.
    """
    if workers.world == 1:
        return plan.prompts, plan.skipped
    cost = [len(p.prompt.ids) + new_tokens for p in plan.prompts]
    order = sorted(range(len(plan.prompts)), key=lambda i: (-cost[i], i))
    loads = [(0, worker) for worker in range(workers.world)]
    mine = []
    for i in order:
        load, worker = heapq.heappop(loads)
        if worker == workers.rank:
            mine.append(i)
        heapq.heappush(loads, (load + cost[i], worker))
    skipped = {row: why for row, why in plan.skipped.items() if row % workers.world == workers.rank}
    return [plan.prompts[i] for i in sorted(mine)], skipped


def launch_workers(args: list[str], num_processes: int) -> int:
    """Run `adpulse-batch ARGS` in `num_processes` worker processes through accelerate's
    launcher (torchrun underneath); returns the launcher's exit code."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "adpulse_batch", *args,
    ]  # fmt: skip
    with subprocess.Popen(command) as launcher:
        try:
            return launcher.wait()
        except KeyboardInterrupt as stop:
            # Ctrl-C at a terminal reaches every process; a SIGTERM sent to this one alone
            # (`timeout`, `kill`) is passed on, and the launcher stops its workers with it.
            launcher.send_signal(signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
            launcher.wait()
            raise


def _free_port() -> int:
    # Two runs on one machine must not both take accelerate's default port.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
