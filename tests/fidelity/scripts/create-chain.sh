# create-chain
qemu-img create -f qcow2 base.qcow2 1M
qemu-img create -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
qemu-img create -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
qemu-img info --backing-chain top.qcow2 | grep -v 'disk size'
