# convert-raw-qcow2
qemu-img create -f raw a.raw 1M >/dev/null
qemu-io -f raw -c 'write -P 1 0 64k' a.raw >/dev/null
qemu-img convert -f raw -O qcow2 a.raw b.qcow2
qemu-img compare a.raw b.qcow2
qemu-img map --output=json b.qcow2
