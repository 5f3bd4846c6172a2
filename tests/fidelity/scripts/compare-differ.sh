# compare-differ
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img create -f qcow2 b.qcow2 1M >/dev/null
qemu-io -c 'write -P 1 4k 512' b.qcow2 >/dev/null
qemu-img compare a.qcow2 b.qcow2; echo rc=$?
