"""``blocklayer-io``, a drop-in for qemu-io 7.2.

- :mod:`.main`: the program's command line and the command loop;
- :mod:`.session`: the open image and the aio requests in flight;
- :mod:`.table`: the command table and the dispatcher;
- :mod:`.cmd_rw`, :mod:`.cmd_aio`, :mod:`.cmd_image`, :mod:`.cmd_control`: the commands;
- :mod:`.output`: qemu-io's number parsing and printing; :mod:`.getopt`: GNU getopt;
  :mod:`.helptext`: the extended help of the commands.
"""
