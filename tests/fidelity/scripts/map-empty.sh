# map-empty
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img map a.qcow2
qemu-img map --output=json a.qcow2
