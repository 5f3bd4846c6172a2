# create-prealloc-meta
qemu-img create -f qcow2 -o preallocation=metadata a.qcow2 1M
qemu-img map a.qcow2
