"""Which process this is under a launcher (torchrun, accelerate launch), and leaving the process group."""
import contextlib
import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def main_process_first():
    """With several processes (torchrun, accelerate launch), let rank 0 download or build before the others look."""
    if world_size() <= 1:
        yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield



def finish_distributed() -> None:
    """Leave the process group together: a rank that exits while the others still hold it can abort in
    the communication library's teardown ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

