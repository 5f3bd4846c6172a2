# create-no-size
qemu-img create -f qcow2 a.qcow2; echo rc=$?
