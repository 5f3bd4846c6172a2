# resize-raw
qemu-img create -f raw a.raw 1M >/dev/null
qemu-img resize -f raw a.raw 3M
stat -c %s a.raw
