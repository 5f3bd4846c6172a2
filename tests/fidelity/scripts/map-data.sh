# map-data
qemu-img create -f qcow2 a.qcow2 4M >/dev/null
qemu-io -c 'write 0 64k' -c 'write -z 1M 64k' -c 'write 2M 128k' a.qcow2 >/dev/null
qemu-img map --output=json a.qcow2
