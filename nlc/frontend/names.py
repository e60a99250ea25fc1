"""Which spec names may become Python identifiers in the emitted code."""

from __future__ import annotations

import keyword
import re

from nlc.errors import NlcError, SourceLoc

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")

# Public attributes of torch.nn.Module (a node name becomes `self.<name>`), plus the names
# the emitted modules import.
RESERVED = frozenset(
    """
    T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda
    double dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter
    get_submodule half ipu load_state_dict modules mtia named_buffers named_children
    named_modules named_parameters parameters register_backward_hook register_buffer
    register_forward_hook register_forward_pre_hook register_full_backward_hook
    register_full_backward_pre_hook register_load_state_dict_post_hook
    register_load_state_dict_pre_hook register_module register_parameter
    register_state_dict_post_hook register_state_dict_pre_hook requires_grad_ set_extra_state
    set_submodule share_memory state_dict to to_empty train training type xpu zero_grad
    self torch nn F math
    """.split()
)


def check_identifier(name: object, what: str, loc: SourceLoc | None) -> str:
    """Reject names that cannot be a Python attribute of an `nn.Module`.

    >>> check_identifier("conv1", "node name", None)
    'conv1'
    """
    if not isinstance(name, str) or not _IDENT.match(name):
        raise NlcError(
            f"{what} {name!r} is not a valid name",
            loc,
            "use letters, digits and underscores, starting with a letter (e.g. conv1, attn_out)",
        )
    if keyword.iskeyword(name) or name in RESERVED:
        raise NlcError(
            f"{what} {name!r} is reserved (a Python keyword or an nn.Module attribute)",
            loc,
            f"rename it, e.g. {name}_",
        )
    return name
