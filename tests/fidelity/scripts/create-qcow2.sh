# create-qcow2
qemu-img create -f qcow2 a.qcow2 64M
qemu-img info a.qcow2 | grep -v 'disk size'
