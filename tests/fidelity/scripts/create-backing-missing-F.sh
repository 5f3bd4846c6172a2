# create-backing-missing-F
qemu-img create -f qcow2 base.qcow2 1M
qemu-img create -f qcow2 -b base.qcow2 top.qcow2; echo rc=$?
