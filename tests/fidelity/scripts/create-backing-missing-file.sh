# create-backing-missing-file
qemu-img create -f qcow2 -b nosuch.qcow2 top.qcow2; echo rc=$?
