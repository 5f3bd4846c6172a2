# convert-progress-sparse
qemu-img create -f qcow2 a.qcow2 128M >/dev/null
qemu-io -c 'write 0 1M' -c 'write 32M 1M' -c 'write 64M 1M' -c 'write 96M 1M' a.qcow2 >/dev/null
qemu-img convert -p -O qcow2 a.qcow2 b.qcow2 | tr '\r' '\n'
