# create-bad-fmt
qemu-img create -f nosuch a.img 1M; echo rc=$?
