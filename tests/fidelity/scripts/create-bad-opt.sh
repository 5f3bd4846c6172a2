# create-bad-opt
qemu-img create -f qcow2 -o nosuch=1 a.qcow2 1M; echo rc=$?
