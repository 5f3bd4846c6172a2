# create-bad-size
qemu-img create -f qcow2 a.qcow2 12X; echo rc=$?
