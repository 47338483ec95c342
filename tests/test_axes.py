"""normlib.axes: the reduction axes each norm uses and the errors both backends raise."""
import pytest

from normlib import axes as ax


def test_batch_norm_axes_reduce_batch_and_space():
    assert ax.batch_norm_axes((8, 3)) == (0,)
    assert ax.batch_norm_axes((8, 3, 5, 5)) == (0, 2, 3)


def test_layer_norm_axes_are_trailing():
    assert ax.layer_norm_axes((2, 3, 4, 5), (4, 5)) == (2, 3)
    assert ax.layer_norm_axes((2, 5), 5) == (1,)


def test_instance_and_group_axes():
    assert ax.instance_norm_axes((2, 3, 4, 5)) == (2, 3)
    assert ax.group_norm_shape((2, 6, 4, 5), 3) == (2, 3, 2 * 4 * 5)


def test_norm_axes_table_matches_the_axis_functions():
    names = ("N", "C", "H", "W")
    shape = (2, 4, 3, 3)
    assert tuple(names[a] for a in ax.batch_norm_axes(shape)) == ax.NORM_AXES["BatchNorm"]
    assert tuple(names[a] for a in ax.instance_norm_axes(shape)) == ax.NORM_AXES["InstanceNorm"]
    assert tuple(names[a] for a in ax.layer_norm_axes(shape, shape[1:])) == ax.NORM_AXES["LayerNorm"]


@pytest.mark.parametrize("call, words", [
    (lambda: ax.group_norm_shape((2, 6, 4), 4), "num_channels (6) must be divisible by num_groups (4)"),
    (lambda: ax.layer_norm_axes((2, 3, 4), (3,)), "normalized_shape=(3) must match"),
    (lambda: ax.check_batch_stats((1, 3)), "more than 1 value per channel"),
    (lambda: ax.check_batch_stats((1, 3, 1, 1)), "call .eval()"),
    (lambda: ax.check_instance_stats((4, 3, 1)), "more than 1 spatial element"),
    (lambda: ax.check_ndim("BatchNorm2d", (2, 3), (4,)), "expected 4D input, got 2D"),
    (lambda: ax.check_num_features("BatchNorm2d", (2, 5, 4, 4), 3), "expected 3 channels"),
    (lambda: ax.batch_norm_axes((3,)), "add a batch axis"),
    (lambda: ax.instance_norm_axes((3, 4)), "spatial"),
    (lambda: ax.normalized_shape_tuple(()), "at least one axis"),
])
def test_bad_shapes_raise_value_errors_that_say_what_to_do(call, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")
                       .replace(".", r"\.")):
        call()


def test_axes_module_imports_no_array_library():
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(ax))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"numpy", "torch"}
