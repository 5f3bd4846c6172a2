# info-missing
qemu-img info nosuch.qcow2; echo rc=$?
