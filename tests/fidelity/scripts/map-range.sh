# map-range
qemu-img create -f qcow2 a.qcow2 4M >/dev/null
qemu-io -c 'write 0 1M' a.qcow2 >/dev/null
qemu-img map --output=json --start-offset=512k --max-length=1M a.qcow2
