# compare-same
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img create -f raw b.raw 1M >/dev/null
qemu-img compare a.qcow2 b.raw; echo rc=$?
