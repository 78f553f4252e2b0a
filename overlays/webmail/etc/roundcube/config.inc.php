<?php
// letterbox: Roundcube reads only the configuration the agent renders (no secret in it:
// it reads des_key from the data directory at run time).
include '/etc/letterbox/webmail/config.inc.php';
