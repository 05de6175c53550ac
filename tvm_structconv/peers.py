"""Peer runtimes a user runs today: onnxruntime, torch eager and ``torch.compile`` (Inductor).

Each loader returns a zero-argument callable that runs one inference on fixed inputs, for
:func:`tvm_structconv.timing.time_callable`. Peers run the original model, and the structured
model as plain unfused ops where they can (onnxruntime: AveragePool + small Conv from
:mod:`tvm_structconv.onnx_structured`; torch: ``StructuredConv2d`` layers that pool then convolve).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from tvm_structconv.manifest import Manifest

__all__ = ["PEERS", "PeerUnavailable", "onnxruntime_runner", "torch_runner"]

PEERS = ("onnxruntime", "torch", "inductor")


class PeerUnavailable(Exception):
    """A peer cannot run this model; the message is the reason shown in its row."""


def onnxruntime_runner(
    onnx_path: str, inputs: Sequence[np.ndarray], threads: int, structured: bool
) -> Callable[[], object]:
    """onnxruntime on the ONNX model (or its plain-op structured rewrite), ``threads`` threads."""
    import onnx
    import onnxruntime

    from tvm_structconv.onnx_structured import rewrite_structured_onnx

    model = onnx.load(onnx_path)
    if structured:
        manifest = Manifest.from_onnx(model)
        if manifest is None:
            raise PeerUnavailable("the ONNX model has no embedded manifest")
        model, rewritten = rewrite_structured_onnx(model, manifest)
        if not rewritten:
            raise PeerUnavailable("no manifest entry names an ONNX initializer")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feeds = {spec.name: array for spec, array in zip(session.get_inputs(), inputs)}
    return lambda: session.run(None, feeds)


def torch_runner(
    module, inputs: Sequence[np.ndarray], threads: int, compiled: bool
) -> Callable[[], object]:
    """torch eager (or ``torch.compile`` with Inductor) on ``module``, ``threads`` threads.

    ``module`` must already be in inference mode (a built-in model, or the module of a
    ``torch.export`` program, which has no train mode).
    """
    import torch

    torch.set_num_threads(threads)
    tensors = [torch.from_numpy(array) for array in inputs]
    if compiled:
        module = torch.compile(module)

    def run():
        with torch.inference_mode():
            return module(*tensors)

    return run
