# resize-grow
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img resize a.qcow2 2M
qemu-img info a.qcow2 | grep 'virtual size'
