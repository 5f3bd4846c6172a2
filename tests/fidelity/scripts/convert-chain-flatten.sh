# convert-chain-flatten
qemu-img create -f qcow2 base.qcow2 1M >/dev/null
qemu-io -c 'write -P 1 0 64k' base.qcow2 >/dev/null
qemu-img create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 >/dev/null
qemu-io -c 'write -P 2 64k 64k' top.qcow2 >/dev/null
qemu-img convert -O qcow2 top.qcow2 flat.qcow2
qemu-img info flat.qcow2 | grep -v 'disk size'
qemu-img compare top.qcow2 flat.qcow2
