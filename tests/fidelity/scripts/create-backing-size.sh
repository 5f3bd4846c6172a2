# create-backing-size
qemu-img create -f qcow2 base.qcow2 1M
qemu-img create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 2M
qemu-img info top.qcow2 | grep 'virtual size'
