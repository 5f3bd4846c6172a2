# compare-size
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img create -f qcow2 b.qcow2 2M >/dev/null
qemu-img compare a.qcow2 b.qcow2; echo rc=$?
qemu-img compare -s a.qcow2 b.qcow2; echo rc=$?
