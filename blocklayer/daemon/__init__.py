"""The storage daemon: the state it owns (:mod:`.state`) and its QMP commands."""
