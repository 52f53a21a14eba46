"""The in-process executor: plans as streams of Arrow batches in this process, no Beam."""

from mmbeam.exec.local.executor import LocalExecutor, execution_path

__all__ = ["LocalExecutor", "execution_path"]
