# create-quiet
qemu-img create -q -f qcow2 a.qcow2 1M; echo rc=$?
ls a.qcow2
