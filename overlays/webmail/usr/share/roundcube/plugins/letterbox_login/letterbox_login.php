<?php

/**
 * letterbox: a login name without '@' ("alice") becomes the account's address,
 * box@alice.<letterbox_domain>, so the identity Roundcube makes is the sender address
 * Postfix's submission accepts for that login.
 */
class letterbox_login extends rcube_plugin
{
    public $task = 'login';

    public function init()
    {
        $this->add_hook('authenticate', [$this, 'authenticate']);
    }

    public function authenticate($args)
    {
        $domain = rcube::get_instance()->config->get('letterbox_domain');
        if ($domain && strpos($args['user'], '@') === false) {
            $args['user'] = 'box@' . $args['user'] . '.' . $domain;
        }
        return $args;
    }
}
