# resize-prealloc
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img resize --preallocation=metadata a.qcow2 2M
qemu-img map a.qcow2
