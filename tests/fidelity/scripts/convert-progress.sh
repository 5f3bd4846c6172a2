# convert-progress
qemu-img create -f qcow2 a.qcow2 4M >/dev/null
qemu-io -c 'write 0 1M' a.qcow2 >/dev/null
qemu-img convert -p -O raw a.qcow2 b.raw | tr '\r' '\n'
