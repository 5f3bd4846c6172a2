"""Image format drivers (qcow2, qed, ...), one package each."""
