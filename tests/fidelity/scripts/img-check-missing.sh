# img-check-missing
qemu-img check nosuch.qcow2; echo rc=$?
