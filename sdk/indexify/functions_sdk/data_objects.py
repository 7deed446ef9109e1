"""``from indexify.functions_sdk.data_objects import File`` as in the original SDK: an alias of
:mod:`indexify.data_objects`."""

from indexify.data_objects import File

__all__ = ["File"]
