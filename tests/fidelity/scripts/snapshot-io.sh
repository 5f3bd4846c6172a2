# snapshot-io
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img snapshot -c s1 a.qcow2
qemu-io -c 'write -P 3 0 4k' a.qcow2 >/dev/null
qemu-img check a.qcow2
