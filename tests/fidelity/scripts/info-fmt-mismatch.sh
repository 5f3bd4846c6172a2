# info-fmt-mismatch
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img info -f raw a.qcow2 | grep -v 'disk size'
