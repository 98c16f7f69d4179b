"""Run configuration: frozen dataclasses parsed once from TOML and validated there.

Every section of the TOML run file is one dataclass (``_sections``). The rest of gnflow receives
these typed objects, never raw dictionaries. Parsing (``_parse``) is generic over the dataclass
fields: their type annotations, ``Literal`` value sets and, for keys that name an implementation,
the registries of :mod:`gnflow.registry` (``_values``), so the allowed values stated in error
messages and in the generated documentation are the ones the code checks. ``_keys`` holds the dotted
``section.key`` helpers of ``--set`` and sweep grids and reads TOML files. Import everything from
here: the private modules may move.
"""

from gnflow._exports import present_under
from gnflow.config._keys import (
    apply_overrides,
    flatten_dotted,
    get_dotted,
    load_config,
    read_toml,
    set_dotted,
    split_key,
)
from gnflow.config._memory import MemoryTerm, available_memory, format_bytes, require_memory, run_memory_terms
from gnflow.config._parse import (  # noqa: F401  (LOCATION_KEYS and the parser's helpers are re-exported)
    LOCATION_KEYS,
    _coerce,
    _type_name,
    config_fields,
    config_from_dict,
    config_from_json,
    config_hash,
    config_to_dict,
    config_to_json,
)
from gnflow.config._sections import (  # noqa: F401  (the value sets and method tuples are re-exported)
    ADAPTIVE_METHODS,
    EXPONENTIAL_METHODS,
    FIXED_METHODS,
    KERNEL_EULER_METHODS,
    SECTIONS,
    Activation,
    AdaptiveMethod,
    BatchOrder,
    ComputeConfig,
    DataConfig,
    DType,
    ExponentialMethod,
    FixedMethod,
    FlowConfig,
    GGNSave,
    KernelEulerMethod,
    ModelConfig,
    ObserveConfig,
    OutputConfig,
    OutputInit,
    RunConfig,
    SaveSpacing,
    Scaling,
    SolverConfig,
    SolverMethod,
    Trainable,
)
from gnflow.config._values import (  # noqa: F401  (_require is re-exported for the sections' checks)
    ConfigError,
    _require,
    data_kinds,
    observable_names,
    register_data_kind,
    register_observable,
)

__all__ = [
    "SECTIONS",
    "ComputeConfig",
    "ConfigError",
    "DataConfig",
    "FlowConfig",
    "MemoryTerm",
    "ModelConfig",
    "ObserveConfig",
    "OutputConfig",
    "RunConfig",
    "SolverConfig",
    "apply_overrides",
    "available_memory",
    "config_fields",
    "config_from_dict",
    "config_from_json",
    "config_hash",
    "config_to_dict",
    "config_to_json",
    "data_kinds",
    "flatten_dotted",
    "format_bytes",
    "get_dotted",
    "load_config",
    "observable_names",
    "read_toml",
    "register_data_kind",
    "register_observable",
    "require_memory",
    "run_memory_terms",
    "set_dotted",
    "split_key",
]

# the public objects are documented, shown and pickled as gnflow.config.NAME, where users import them
present_under(__name__, globals(), __all__)
