"""The QED image format (``docs/interop/qed_spec.rst``): see :mod:`.driver`."""
