"""doctor's import diagnosis, on the messages NumPy and Python really produce.

The whole case (NumPy 2 in a bookworm venv in front of apt's OpenCV) runs for real in the emulated
Pi OS check (tools/pi_check.py); here the classifier and the stderr capture are checked alone."""
import os
import sys

import numpy
import pytest

from fer_edge.doctor import captured_stderr, import_fix


def numpy2_guard_failure() -> tuple[str, str]:
    """What a NumPy-1.x-built extension (apt's cv2 on bookworm) gets from NumPy 2 when it imports:
    NumPy's own guard, called the way import_array() reaches it, with what it writes to stderr."""
    if int(numpy.__version__.split(".")[0]) < 2:
        pytest.skip("needs NumPy 2 (its guard is what a NumPy 1.x module runs into)")
    import numpy.core._multiarray_umath as _multiarray_umath
    with captured_stderr() as noise:
        with pytest.raises(ImportError) as failure:
            _multiarray_umath.__getattr__("_ARRAY_API")
    return f"{failure.value}\n{noise.getvalue()}", noise.getvalue()


def test_numpy_abi_clash_gets_the_pin_with_this_interpreter():
    text, noise = numpy2_guard_failure()
    assert "compiled using NumPy 1.x" in noise  # captured, so doctor does not print it
    fix = import_fix(text, python="/opt/fer-edge/venv/bin/python")
    assert fix is not None and "\n" not in fix
    assert fix.startswith("NumPy ABI clash")
    assert "/opt/fer-edge/venv/bin/python -m pip install 'numpy<2' 'ml_dtypes<0.6'" in fix


def test_the_error_cv2_raises_alone_is_recognised():
    # import_array()'s message in NumPy 1.x's __multiarray_api.h, which apt's cv2 was built with
    # (what `import cv2` raises on bookworm, after NumPy 2's warning).
    fix = import_fix("ImportError: numpy.core.multiarray failed to import", python="py")
    assert fix is not None and "py -m pip install 'numpy<2'" in fix


def test_module_built_for_numpy2_under_numpy1():
    text = "ImportError: numpy._core.multiarray failed to import"
    assert "'numpy<2' 'ml_dtypes<0.6'" in import_fix(text, python="py", python_version=(3, 11))
    assert "py -m pip install --upgrade numpy" in import_fix(text, python="py", python_version=(3, 13))


def test_missing_modules_name_their_install():
    with pytest.raises(ImportError) as failure:
        __import__("definitely_not_here_fer")  # Python's real message
    assert "py -m pip install definitely_not_here_fer" in import_fix(str(failure.value), python="py")
    # the same message for the modules doctor knows the route for (cv2 from apt on a Pi)
    for module, expected in (("cv2", "apt install python3-opencv"),
                             ("ai_edge_litert", "pip install ai-edge-litert")):
        assert expected in import_fix(str(failure.value).replace("definitely_not_here_fer", module))


def test_a_missing_shared_library_is_named():
    text = "ImportError: libGL.so.1: cannot open shared object file: No such file or directory"
    assert "libGL.so.1" in import_fix(text)


def test_other_failures_get_no_invented_fix():
    assert import_fix("ValueError: model has 3 outputs") is None


def test_captured_stderr_takes_python_and_file_descriptor_writes():
    with captured_stderr() as noise:
        sys.stderr.write("from python\n")
        os.write(2, b"from C, fd 2\n")
    assert "from python" in noise.getvalue() and "from C, fd 2" in noise.getvalue()
    os.write(2, b"")  # fd 2 is usable again
