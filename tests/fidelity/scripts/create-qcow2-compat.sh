# create-qcow2-compat
qemu-img create -f qcow2 -o compat=0.10 a.qcow2 16M
qemu-img info a.qcow2 | grep -v 'disk size'
