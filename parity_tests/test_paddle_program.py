"""Every zoo model built on paddle converts to a static program with ``paddle.jit.to_static`` and
``paddle.jit.save``, and the program loaded back with ``paddle.jit.load`` computes what the dygraph model
computes, on both framework lines: Paddle 2.6 writes a ProgramDesc (``.pdmodel``), Paddle 3 a PIR program
(``.json``, lane 3), which paddle2onnx 2.x reads (the ONNX side is test_onnx_parity.py).

float64 is the authority: the same kernels run the same arithmetic in both modes, so the loaded program
must agree with eager to float64 rounding (1e-10 relative to the output's magnitude, far above float64's
eps times any depth here and far below any semantic difference); float32 agreement is checked through the
exported files in test_onnx_parity.py.
"""
import numpy as np
import pytest

import dualml
from dualml.module import init_weights
from dualml.parity import checked_model
from dualml.zoo import ZOO

pytestmark = pytest.mark.backends("paddle")
FLOAT64_RTOL = 1e-10


@pytest.mark.parametrize("name", list(ZOO))
def test_jit_saved_program_computes_what_eager_computes(name, tmp_path):
    import paddle
    from dualml_paddle.export import saved_program
    from dualml_paddle.lane import PADDLE3

    model = checked_model(name)
    spec = model.input_spec(2)[0]
    x = spec.sample(np.random.default_rng(0))
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype("float64")
    net = dualml.build(model, "paddle", weights=init_weights(model, 0), dtype="float64")
    net.eval()
    with paddle.no_grad():
        eager = net(paddle.to_tensor(x)).numpy()
    inputs = [paddle.static.InputSpec([None, *x.shape[1:]], str(x.dtype), "input")]
    prefix = str(tmp_path / name)
    paddle.jit.save(paddle.jit.to_static(net, input_spec=inputs), prefix)
    program, params = saved_program(prefix)
    assert program.endswith(".json" if PADDLE3 else ".pdmodel") and params, (program, params)
    loaded = paddle.jit.load(prefix)
    loaded.eval()
    with paddle.no_grad():
        got = loaded(paddle.to_tensor(x)).numpy()
    assert got.dtype == np.float64 and got.shape == eager.shape
    np.testing.assert_allclose(got, eager, rtol=0, atol=FLOAT64_RTOL * (1.0 + float(np.abs(eager).max())))
