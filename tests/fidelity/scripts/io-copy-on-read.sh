# io-copy-on-read
qemu-img create -f qcow2 base.qcow2 1M >/dev/null
qemu-io -c 'write -P 7 0 64k' base.qcow2 >/dev/null
qemu-img create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 >/dev/null
qemu-io -C -c 'read -P 7 0 64k' top.qcow2 | sed 's/(.*)/X/'
qemu-img map top.qcow2
