# shellcheck shell=bash
# devstack plugin of ha-snapshot.
#
# devstack sources this file once per phase, with the mode and the phase
# as its arguments ("stack install", "stack post-config", "stack extra",
# "stack test-config", "unstack", "clean"), after devstack/settings.
#
#   stack install      install the project (pip install -e), qemu-img and
#                      what libvirt-python builds against
#   stack post-config  Nova's versioned notifications on every Nova node;
#                      /etc/ha-snapshot/ha-snapshot.conf and the bus
#                      signing key (the master key on the manager's node,
#                      HA_SNAPSHOT_RPC_KEY elsewhere); on the node of
#                      the API: the service user, the Keystone service
#                      and its endpoint
#   stack extra        the database and the Swift container (on the
#                      manager's node); start the manager and the API
#                      (under uWSGI by default) on the controller, the
#                      agent on compute hosts
#   stack test-config  check that the manager's store answers
#   unstack            stop the three services
#   clean              remove the configuration and the local state
#
# Services (enable_service/disable_service): ha-snapshot-api,
# ha-snapshot-manager (controller), ha-snapshot-agent (with n-cpu).
#
# devstack globals this file reads but never sets (set by stackrc, lib/*
# and devstack/settings): DATA_DIR, ENABLE_DEBUG_LOG_LEVEL,
# KEYSTONE_SERVICE_URI, LIBVIRT_GROUP, NOVA_CONF, NOVA_CPU_CONF,
# NOVA_NOTIFICATION_FORMAT, NOVA_NUM_CELLS, REGION_NAME, SERVICE_DOMAIN_NAME,
# SERVICE_PASSWORD, SERVICE_PROJECT_NAME, SERVICE_TIMEOUT, STACK_USER and
# the HA_SNAPSHOT_* variables. (shellcheck takes upper-case names for
# environment variables and does not flag them.)

# NOTE: trace this file's commands into devstack's log, as devstack's own
# files do; the caller's setting is restored at the end.
_XTRACE_HA_SNAPSHOT=$(set +o | grep xtrace)
set -o xtrace


# Helpers
# -------

# The services this plugin runs, for the dispatcher below.
HA_SNAPSHOT_SERVICES="ha-snapshot-api ha-snapshot-manager ha-snapshot-agent"

# Does this node hold the mirror environment's side (database, store and
# service credentials)? Compute-only nodes do not: an agent needs nothing
# but the message bus, and a compromised compute host must not be able to
# touch recovery data.
function _ha_snapshot_is_mirror_node {
    is_service_enabled ha-snapshot-manager ha-snapshot-api
}

# The store: the Swift container when Swift is enabled, else a directory.
function _ha_snapshot_store_url {
    if [[ -n "$HA_SNAPSHOT_STORE_URL" ]]; then
        echo "$HA_SNAPSHOT_STORE_URL"
    elif is_service_enabled swift; then
        echo "swift://$HA_SNAPSHOT_SWIFT_CONTAINER"
    else
        echo "file://$HA_SNAPSHOT_STATE_DIR/store"
    fi
}

# _ha_snapshot_replica_conf N - the config file of manager replica N
function _ha_snapshot_replica_conf {
    echo "$HA_SNAPSHOT_CONF_DIR/ha-snapshot-manager-$1.conf"
}

function _ha_snapshot_use_uwsgi {
    [[ "${HA_SNAPSHOT_USE_UWSGI,,}" == true ]]
}

# The public endpoint: under Apache's path when uWSGI serves the API.
function _ha_snapshot_api_url {
    if _ha_snapshot_use_uwsgi; then
        echo "$HA_SNAPSHOT_SERVICE_PROTOCOL://$HA_SNAPSHOT_SERVICE_HOST$HA_SNAPSHOT_API_PATH"
    else
        echo "$HA_SNAPSHOT_SERVICE_PROTOCOL://$HA_SNAPSHOT_SERVICE_HOST:$HA_SNAPSHOT_SERVICE_PORT"
    fi
}

# configure_ha_snapshot_uwsgi() - the uWSGI config of the API
#
# devstack's write_uwsgi_config: master, workers, die-on-term, graceful
# SIGTERM, a unix socket behind Apache (which reads the requests of idle
# and slow clients, so they never hold a worker). Then the API's own
# needs: its config directory, no request log of uwsgi's (it would write
# the alarm URL's secret; the API writes its own access log), and
# harakiri as the last resort for a worker stuck past [api] rpc_timeout.
function configure_ha_snapshot_uwsgi {
    write_uwsgi_config "$HA_SNAPSHOT_UWSGI_CONF" "$HA_SNAPSHOT_UWSGI" \
        "$HA_SNAPSHOT_API_PATH" "" "ha-snapshot-api"
    iniset "$HA_SNAPSHOT_UWSGI_CONF" uwsgi env \
        "OS_HA_SNAPSHOT_CONFIG_DIR=$HA_SNAPSHOT_CONF_DIR"
    iniset "$HA_SNAPSHOT_UWSGI_CONF" uwsgi disable-logging true
    iniset "$HA_SNAPSHOT_UWSGI_CONF" uwsgi harakiri 120
}

# Password authentication of the service user in one option group: the
# keystoneauth1 options that ha-snapshot registers for its clients of
# Swift, Nova and Glance.
# _ha_snapshot_iniset_ksa <section>
function _ha_snapshot_iniset_ksa {
    local section=$1
    iniset "$HA_SNAPSHOT_CONF" "$section" auth_type password
    iniset "$HA_SNAPSHOT_CONF" "$section" auth_url "$KEYSTONE_SERVICE_URI"
    iniset "$HA_SNAPSHOT_CONF" "$section" username "$HA_SNAPSHOT_SERVICE_USER"
    iniset "$HA_SNAPSHOT_CONF" "$section" password "$SERVICE_PASSWORD"
    iniset "$HA_SNAPSHOT_CONF" "$section" project_name "$SERVICE_PROJECT_NAME"
    iniset "$HA_SNAPSHOT_CONF" "$section" user_domain_name "$SERVICE_DOMAIN_NAME"
    iniset "$HA_SNAPSHOT_CONF" "$section" project_domain_name "$SERVICE_DOMAIN_NAME"
    iniset "$HA_SNAPSHOT_CONF" "$section" region_name "$REGION_NAME"
    iniset "$HA_SNAPSHOT_CONF" "$section" interface public
}

# The value of Nova's [notifications] notification_format: the manager
# reads versioned notifications; keep the unversioned ones when something
# else reads them.
function _ha_snapshot_notification_format {
    if [[ -n "$HA_SNAPSHOT_NOVA_NOTIFICATION_FORMAT" ]]; then
        echo "$HA_SNAPSHOT_NOVA_NOTIFICATION_FORMAT"
    elif [[ "${NOVA_NOTIFICATION_FORMAT:-}" == both ]] || \
            is_service_enabled ceilometer; then
        echo both
    else
        echo versioned
    fi
}


# Phases
# ------

# install_ha_snapshot() - the project and the tools it runs
function install_ha_snapshot {
    # NOTE: every delta and image is inspected with qemu-img before use;
    # libvirt-python, a requirement, has no wheels and builds against the
    # host's libvirt, also where nova-compute (which installs it) is not.
    if is_ubuntu; then
        install_package qemu-utils libvirt-dev pkg-config
    else
        install_package qemu-img libvirt-devel pkgconf-pkg-config
    fi
    setup_develop "$HA_SNAPSHOT_DIR"
}

# configure_nova_notifications() - make Nova send what the manager reads
#
# Nova sends no versioned notifications by default. Set them in every Nova
# configuration file of this node: nova.conf (API, scheduler, super
# conductor; nova-compute's nova-cpu.conf is copied from it when n-cpu
# starts, after this phase), nova-cpu.conf when it already exists (a
# re-stack), and each cell conductor's nova_cellN.conf, which has no
# [oslo_messaging_notifications] of its own.
function configure_nova_notifications {
    local format conf i
    format=$(_ha_snapshot_notification_format)
    local confs=("$NOVA_CONF")
    if [[ -f "$NOVA_CPU_CONF" ]]; then
        confs+=("$NOVA_CPU_CONF")
    fi
    for i in $(seq 1 "${NOVA_NUM_CELLS:-1}"); do
        conf=$(conductor_conf "$i")
        if [[ -f "$conf" ]]; then
            confs+=("$conf")
        fi
    done
    for conf in "${confs[@]}"; do
        iniset "$conf" notifications notification_format "$format"
        iniset "$conf" oslo_messaging_notifications driver messagingv2
        iniset "$conf" oslo_messaging_notifications transport_url \
            "$(get_notification_url)"
    done
}

# _ha_snapshot_write_key <file> <key> - a key file only the stack user reads
function _ha_snapshot_write_key {
    install -m 600 /dev/null "$1"
    printf '%s\n' "$2" > "$1"
}

# configure_ha_snapshot_keys() - [rpc_auth]: the master key on the
# manager's node (the API and an agent there derive theirs from it), the
# host's own derived key on a compute-only node
function configure_ha_snapshot_keys {
    if is_service_enabled ha-snapshot-manager; then
        local master=$HA_SNAPSHOT_RPC_MASTER_KEY
        if [[ -z "$master" ]]; then
            master=$(generate_hex_string 32)
        fi
        _ha_snapshot_write_key "$HA_SNAPSHOT_CONF_DIR/rpc-master.key" "$master"
        iniset "$HA_SNAPSHOT_CONF" rpc_auth master_key_file \
            "$HA_SNAPSHOT_CONF_DIR/rpc-master.key"
    elif [[ -n "$HA_SNAPSHOT_RPC_KEY" ]]; then
        _ha_snapshot_write_key "$HA_SNAPSHOT_CONF_DIR/rpc.key" \
            "$HA_SNAPSHOT_RPC_KEY"
        iniset "$HA_SNAPSHOT_CONF" rpc_auth key_file \
            "$HA_SNAPSHOT_CONF_DIR/rpc.key"
    else
        die $LINENO "ha-snapshot needs this host's bus key: set" \
            "HA_SNAPSHOT_RPC_KEY in local.conf to what" \
            "'ha-snapshot-manage rpc-key derive --host <this host>' (--api" \
            "for an API-only node) prints on the manager's node"
    fi
}

# configure_ha_snapshot() - write ha-snapshot.conf and make the state dirs
function configure_ha_snapshot {
    sudo install -d -o "$STACK_USER" "$HA_SNAPSHOT_CONF_DIR" \
        "$HA_SNAPSHOT_STATE_DIR"
    rm -f "$HA_SNAPSHOT_CONF"

    iniset "$HA_SNAPSHOT_CONF" DEFAULT debug "$ENABLE_DEBUG_LOG_LEVEL"
    iniset_rpc_backend ha-snapshot "$HA_SNAPSHOT_CONF" DEFAULT
    # NOTE: the manager reads Nova's notifications where Nova sends them.
    iniset "$HA_SNAPSHOT_CONF" oslo_messaging_notifications transport_url \
        "$(get_notification_url)"

    # Every node: the agent's side.
    iniset "$HA_SNAPSHOT_CONF" agent state_dir "$HA_SNAPSHOT_STATE_DIR/agent"
    iniset "$HA_SNAPSHOT_CONF" agent hypervisor "$HA_SNAPSHOT_HYPERVISOR"
    iniset "$HA_SNAPSHOT_CONF" libvirt connection_uri "$HA_SNAPSHOT_LIBVIRT_URI"
    iniset "$HA_SNAPSHOT_CONF" libvirt backup_dir "$HA_SNAPSHOT_STATE_DIR/libvirt"
    iniset "$HA_SNAPSHOT_CONF" policy name "$HA_SNAPSHOT_POLICY"
    iniset "$HA_SNAPSHOT_CONF" policy rpo_target "$HA_SNAPSHOT_RPO_TARGET"
    configure_ha_snapshot_keys

    if ! _ha_snapshot_is_mirror_node; then
        return 0
    fi

    # The mirror environment's side: database, store, recovery, API.
    iniset "$HA_SNAPSHOT_CONF" database connection \
        "$(database_connection_url "$HA_SNAPSHOT_DB_NAME")"
    iniset "$HA_SNAPSHOT_CONF" manager spool_dir "$HA_SNAPSHOT_STATE_DIR/spool"
    iniset "$HA_SNAPSHOT_CONF" manager protect_all "$HA_SNAPSHOT_PROTECT_ALL"
    # NOTE: more replicas read ha-snapshot.conf, then a file of their own
    # naming their host (their topic.<host>) and spool.
    local n
    for n in $(seq 2 "$HA_SNAPSHOT_MANAGERS"); do
        iniset "$(_ha_snapshot_replica_conf "$n")" manager host \
            "${HOSTNAME}-manager-$n"
        iniset "$(_ha_snapshot_replica_conf "$n")" manager spool_dir \
            "$HA_SNAPSHOT_STATE_DIR/spool-$n"
    done
    iniset "$HA_SNAPSHOT_CONF" recovery actions "$HA_SNAPSHOT_RECOVERY_ACTIONS"
    iniset "$HA_SNAPSHOT_CONF" recovery work_dir "$HA_SNAPSHOT_STATE_DIR/recovery"
    # NOTE: the host monitor fences with the [nova] service user below
    # (admin: it forces compute services down and evacuates).
    iniset "$HA_SNAPSHOT_CONF" host_monitor enabled "$HA_SNAPSHOT_HOST_MONITOR"
    iniset "$HA_SNAPSHOT_CONF" host_monitor fencing_driver \
        "$HA_SNAPSHOT_FENCING_DRIVER"
    iniset "$HA_SNAPSHOT_CONF" host_monitor evacuate "$HA_SNAPSHOT_EVACUATE"

    local store
    store=$(_ha_snapshot_store_url)
    iniset "$HA_SNAPSHOT_CONF" storage backend_url "$store"
    if [[ "$store" == swift://* ]]; then
        _ha_snapshot_iniset_ksa swift
    fi
    # NOTE: the rebuild recovery rebuilds servers of every project and
    # uploads restore points as images: the service user acts for them.
    _ha_snapshot_iniset_ksa nova
    _ha_snapshot_iniset_ksa glance
    # NOTE: with Aodh the manager verifies every alarm with it before a
    # recovery ([recovery] alarm_verification = auto): a replayed alarm
    # notification starts nothing.
    if is_service_enabled aodh-api; then
        _ha_snapshot_iniset_ksa aodh
    fi

    iniset "$HA_SNAPSHOT_CONF" api auth_strategy keystone
    # NOTE: alarm URLs are built from it, never from a request's Host.
    iniset "$HA_SNAPSHOT_CONF" api public_endpoint "$(_ha_snapshot_api_url)"
    if _ha_snapshot_use_uwsgi; then
        if is_service_enabled ha-snapshot-api; then
            configure_ha_snapshot_uwsgi
        fi
    else
        iniset "$HA_SNAPSHOT_CONF" api host "$HA_SNAPSHOT_API_LISTEN"
        iniset "$HA_SNAPSHOT_CONF" api port "$HA_SNAPSHOT_SERVICE_PORT"
    fi
    # NOTE: the key of the per-server secrets in Aodh alarm URLs; a new one
    # per stack.sh invalidates the alarm URLs of the previous stack.
    iniset "$HA_SNAPSHOT_CONF" api alarm_secret_key "$(generate_hex_string 32)"
    configure_keystone_authtoken_middleware "$HA_SNAPSHOT_CONF" \
        "$HA_SNAPSHOT_SERVICE_USER"
}

# create_ha_snapshot_accounts() - service user, service and endpoint
function create_ha_snapshot_accounts {
    # NOTE: admin, not only service: the manager looks up, rebuilds and
    # images servers of every project, and keeps the store in its own
    # Swift account, which Swift's operator roles must let it write.
    create_service_user "$HA_SNAPSHOT_SERVICE_USER" admin

    local service
    service=$(get_or_create_service ha-snapshot \
        "$HA_SNAPSHOT_SERVICE_TYPE" \
        "High availability by continuous incremental snapshots")
    get_or_create_endpoint "$service" "$REGION_NAME" "$(_ha_snapshot_api_url)"
}

# init_ha_snapshot() - the database and the store, on the manager's node
function init_ha_snapshot {
    recreate_database "$HA_SNAPSHOT_DB_NAME"
    "$HA_SNAPSHOT_BIN_DIR/ha-snapshot-manage" \
        --config-file "$HA_SNAPSHOT_CONF" db sync

    # NOTE: the swift backend would create its container on first use;
    # creating it here, as the service user whose account holds it, makes
    # a wrong credential or role fail stack.sh instead of the first merge.
    local store
    store=$(_ha_snapshot_store_url)
    if [[ "$store" == swift://* ]] && is_service_enabled swift; then
        local container=${store#swift://}
        container=${container%%/*}
        openstack \
            --os-auth-url "$KEYSTONE_SERVICE_URI" \
            --os-identity-api-version 3 \
            --os-username "$HA_SNAPSHOT_SERVICE_USER" \
            --os-password "$SERVICE_PASSWORD" \
            --os-user-domain-name "$SERVICE_DOMAIN_NAME" \
            --os-project-name "$SERVICE_PROJECT_NAME" \
            --os-project-domain-name "$SERVICE_DOMAIN_NAME" \
            --os-region-name "$REGION_NAME" \
            container create "$container"
    fi
}

# start_ha_snapshot() - the services enabled on this node
function start_ha_snapshot {
    local cmd="--config-file $HA_SNAPSHOT_CONF"
    run_process ha-snapshot-manager "$HA_SNAPSHOT_BIN_DIR/ha-snapshot-manager $cmd"
    if is_service_enabled ha-snapshot-manager; then
        local n
        for n in $(seq 2 "$HA_SNAPSHOT_MANAGERS"); do
            run_process "ha-snapshot-manager-$n" \
                "$HA_SNAPSHOT_BIN_DIR/ha-snapshot-manager $cmd --config-file $(_ha_snapshot_replica_conf "$n")"
        done
    fi
    if is_service_enabled ha-snapshot-api; then
        if _ha_snapshot_use_uwsgi; then
            run_process ha-snapshot-api "$HA_SNAPSHOT_BIN_DIR/uwsgi --procname-prefix ha-snapshot-api --ini $HA_SNAPSHOT_UWSGI_CONF"
        else
            run_process ha-snapshot-api "$HA_SNAPSHOT_BIN_DIR/ha-snapshot-api $cmd"
        fi
        echo "Waiting for ha-snapshot-api to answer at $(_ha_snapshot_api_url)"
        if ! wait_for_service "$SERVICE_TIMEOUT" "$(_ha_snapshot_api_url)/"; then
            die $LINENO "ha-snapshot-api did not answer at" \
                "$(_ha_snapshot_api_url) within $SERVICE_TIMEOUT s"
        fi
    fi
    # NOTE: as nova-compute, in the libvirt group: the agent talks to the
    # same libvirtd.
    if is_service_enabled n-cpu; then
        run_process ha-snapshot-agent \
            "$HA_SNAPSHOT_BIN_DIR/ha-snapshot-agent $cmd" "$LIBVIRT_GROUP"
    fi
}

# check_ha_snapshot() - the manager's store answers with these settings
function check_ha_snapshot {
    "$HA_SNAPSHOT_BIN_DIR/ha-snapshot-manage" \
        --config-file "$HA_SNAPSHOT_CONF" store verify
}

# stop_ha_snapshot() - stop every service of this plugin on this node
function stop_ha_snapshot {
    local service n
    for service in $HA_SNAPSHOT_SERVICES; do
        stop_process "$service"
    done
    if is_service_enabled ha-snapshot-manager; then
        for n in $(seq 2 "$HA_SNAPSHOT_MANAGERS"); do
            stop_process "ha-snapshot-manager-$n"
        done
    fi
}

# cleanup_ha_snapshot() - remove what stack.sh left on this node
function cleanup_ha_snapshot {
    if _ha_snapshot_use_uwsgi && is_service_enabled ha-snapshot-api; then
        remove_uwsgi_config "$HA_SNAPSHOT_UWSGI_CONF" "ha-snapshot-api"
    fi
    sudo rm -rf "$HA_SNAPSHOT_CONF_DIR" "$HA_SNAPSHOT_STATE_DIR"
}


# Dispatcher
# ----------

# NOTE: ${2:-}: unstack and clean come without a phase.
# shellcheck disable=SC2086  # a list of names, split on purpose
if is_service_enabled $HA_SNAPSHOT_SERVICES; then
    case "$1:${2:-}" in
        stack:install)
            echo_summary "Installing ha-snapshot"
            install_ha_snapshot
            ;;
        stack:post-config)
            echo_summary "Configuring ha-snapshot"
            if is_service_enabled nova; then
                configure_nova_notifications
            fi
            configure_ha_snapshot
            if is_service_enabled ha-snapshot-api && is_service_enabled key; then
                create_ha_snapshot_accounts
            fi
            ;;
        stack:extra)
            if is_service_enabled ha-snapshot-manager; then
                echo_summary "Initializing ha-snapshot"
                init_ha_snapshot
            fi
            echo_summary "Starting ha-snapshot"
            start_ha_snapshot
            ;;
        stack:test-config)
            if is_service_enabled ha-snapshot-manager; then
                echo_summary "Checking the ha-snapshot store"
                check_ha_snapshot
            fi
            ;;
        unstack:*)
            stop_ha_snapshot
            ;;
        clean:*)
            cleanup_ha_snapshot
            ;;
    esac
fi

# Restore xtrace
$_XTRACE_HA_SNAPSHOT
