# convert-compressed
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'write -P 1 0 256k' a.qcow2 >/dev/null
qemu-img convert -c -O qcow2 a.qcow2 b.qcow2
qemu-img compare a.qcow2 b.qcow2
qemu-img check b.qcow2
