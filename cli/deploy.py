"""`fedreid server|site|keys|certs`: the operator's commands for a real deployment.

``server start`` validates everything it can, starts the proxy that is the coordinator's
only public port (sites' Fleet API), then *becomes* the SuperLink (exec), which listens on
loopback only: submitting, stopping and following runs and registering keys need a shell on
the coordinator (or an SSH tunnel to it). ``site join`` checks the data and that the
coordinator speaks the protocol it was told to, then runs the SuperNode in the foreground and
turns Flower's failures into messages an operator can act on. ``--dry-run`` prints the
commands instead.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.table import Table

from cli.common import console
from cli.common import fail as _fail
from fedreid.config import ConfigError, FedReIDConfig, load_config
from fedreid.config.loader import run_config_toml
from fedreid.data.records import DataError
from fedreid.deploy import certs as certs_mod
from fedreid.deploy import processes, proxy, run_status, sharing
from fedreid.deploy.flower_app import flower_app_dir
from fedreid.deploy.probe import protocol_problem
from fedreid.deploy.site_check import find_problems

server_app = typer.Typer(help="Coordinator: start it, submit and follow runs (on the coordinator).",
                         no_args_is_help=True)
site_app = typer.Typer(help="A camera site: check its data, join the federation.", no_args_is_help=True)
keys_app = typer.Typer(help="Site identity keys: create, register with the coordinator, list, unregister.",
                       no_args_is_help=True)

DEFAULT_PORT = 9092  # public: the sites' Fleet API, through the proxy
CONTROL_PORT = 9093  # loopback: the SuperLink itself (runs, keys, the ServerApp)
SHOWN_PROBLEMS = 20  # `site check` lists this many problems, then counts the rest
T = TypeVar("T")
PROBE_EVERY_S = 10.0  # a retrying site re-checks the coordinator's protocol at most this often
ACTIVATION_WAIT_S = 120.0  # a stopped node's key stays active until its heartbeats lapse (about a minute)
ACTIVATION_RETRY_S = 10.0
Control = Annotated[str, typer.Option(
    "--superlink", help="The coordinator's control address HOST:PORT: loopback only, so run this on the "
                        "coordinator (or through an SSH tunnel to it).")]
RootCert = Annotated[Path | None, typer.Option(
    "--root-certificates", help="The federation's CA certificate (ca.crt from `fedreid certs`).")]
Insecure = Annotated[bool, typer.Option(
    "--insecure", help="Talk plain HTTP to a coordinator started with --insecure (tests only).")]


def _warn(message: str) -> None:
    console.print(f"[bold yellow]warning:[/] {message}", highlight=False)


def _error(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)


def _show(cmd: list[str]) -> None:
    console.print("$ " + " ".join(cmd), markup=False, highlight=False, soft_wrap=True)


def _connection(superlink: str, root_certificates: Path | None, insecure: bool) -> run_status.Connection:
    try:
        return run_status.check_connection(superlink, root_certificates, insecure)
    except ValueError as exc:
        _fail(str(exc))


def _control_hint(conn: run_status.Connection) -> str:
    trust = "--insecure" if conn.root_certificates is None else f"--root-certificates {conn.root_certificates}"
    return f"--superlink {conn.address} {trust}"


# ---- the SuperLink's registered sites (Control API) ------------------------------------------
def registered_nodes(conn: run_status.Connection) -> list:
    """Flower's NodeInfo of every node the SuperLink knows (id, name = site, status, times).

    ``flwr supernode list --format json`` leaves the names out, so this asks the Control API
    directly (Flower's own client, an internal API).
    """
    from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
    from flwr.proto.control_pb2 import ListNodesRequest
    from flwr.supercore.control.control_http_client import ControlHttpClient
    from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor

    certs = None if conn.root_certificates is None else Path(conn.root_certificates).read_bytes()
    client = ControlHttpClient.from_server_address(
        conn.address, insecure=certs is None, root_certificates=certs,
        interceptors=[CliClientHttpInterceptor(), RuntimeVersionHttpInterceptor(component_name="flwr CLI")])
    try:
        return list(client.ListNodes(ListNodesRequest()).nodes_info)
    except Exception as exc:  # noqa: BLE001 - httpx, TLS and Flower errors all mean "cannot ask"
        if "403" in str(exc):
            raise RuntimeError(
                f"{conn.address} refused the control API: that is the coordinator's public port, which "
                f"serves sites only. Run this on the coordinator with --superlink 127.0.0.1:{CONTROL_PORT} "
                "(its --control-port), or through an SSH tunnel to it") from exc
        raise RuntimeError(
            f"cannot reach the coordinator's control API at {conn.address} ({type(exc).__name__}: {exc}); "
            f"is `fedreid server start` running on this machine? Its control port is loopback-only "
            f"(default 127.0.0.1:{CONTROL_PORT})") from exc
    finally:
        client.close()


def _sites_by_node(conn: run_status.Connection) -> dict[int, str]:
    try:
        nodes = registered_nodes(conn)
    except RuntimeError as exc:
        _fail(str(exc), code=1)
    return {int(n.node_id): n.name for n in nodes if n.name and n.status != "unregistered"}


# ---- certificates and keys ---------------------------------------------------------------
def certs(
    host: Annotated[list[str], typer.Option(
        "--host", help="Name or IP the sites use to reach the coordinator; repeat for several.")],
    out: Annotated[Path, typer.Option(help="Folder for ca.crt, ca.key, server.pem, server.key.")] = Path("certs"),
    days: Annotated[int, typer.Option(help="Validity of new certificates, days.")] = 365,
    new_ca: Annotated[bool, typer.Option(
        "--new-ca", help="Replace an existing CA (every site then needs the new ca.crt).")] = False,
) -> None:
    """Create a CA and a TLS server certificate for the coordinator (test or small deployment)."""
    try:
        files = certs_mod.create_certificates(out, host, days=days, new_ca=new_ca)
    except ValueError as exc:
        _fail(str(exc))
    hosts = ", ".join(certs_mod.certificate_hosts(files.server_cert))
    console.print(f"server certificate {files.server_cert} valid for: {hosts}", highlight=False)
    console.print(f"coordinator needs: {files.server_cert}, {files.server_key}, {files.ca_cert}\n"
                  f"every site needs:  {files.ca_cert} (only)\n"
                  f"keep {files.ca_cert.parent / certs_mod.CA_KEY} offline: it can sign certificates "
                  "the sites would trust", highlight=False)


@keys_app.command("create")
def keys_create(
    sites: Annotated[list[str], typer.Argument(help="Site names, e.g. market cuhk01.")],
    out: Annotated[Path, typer.Option(help="Folder for <site>.key and <site>.pub.")] = Path("keys"),
    force: Annotated[bool, typer.Option("--force", help="Replace existing keys (new identity).")] = False,
) -> None:
    """Create an EC key pair per site: the private key stays at the site, the .pub is registered."""
    for site in sites:
        try:
            keys = certs_mod.create_site_keys(out, site, overwrite=force)
        except ValueError as exc:
            _fail(str(exc))
        console.print(f"{site}: private {keys.private_key} (copy to the site only), "
                      f"public {keys.public_key} (register it)", highlight=False)


@keys_app.command("register")
def keys_register(
    public_keys: Annotated[list[Path], typer.Argument(help="Sites' .pub files (`fedreid keys create`).")],
    superlink: Control = f"127.0.0.1:{CONTROL_PORT}",
    root_certificates: RootCert = Path("certs/ca.crt"),
    insecure: Insecure = False,
) -> None:
    """Bind each key to its site and allow it to join (a coordinator started with
    --enable-supernode-auth admits only registered keys). The site is the name in the .pub
    (`fedreid keys create` writes it), else the file name: keys/market.pub → market."""
    conn = _connection(superlink, root_certificates, insecure)
    sites = []
    for pub in public_keys:
        try:
            certs_mod.check_public_key(pub)
            sites.append(certs_mod.site_of_public_key(pub))
        except ValueError as exc:
            _fail(str(exc))
    taken = {site: node for node, site in _sites_by_node(conn).items()}
    with run_status.flwr_cli_env(conn) as env:
        for pub, site in zip(public_keys, sites, strict=True):
            if site in taken:
                _fail(f"{pub}: site {site!r} is already registered as node {taken[site]}; a site has one "
                      f"key. To give it this key, first `fedreid keys unregister {site} {_control_hint(conn)}`",
                      code=1)
            try:
                node = run_status.register_key(pub, site, env)
            except RuntimeError as exc:
                _fail(f"{pub}: {exc}", code=1)
            taken[site] = node
            console.print(f"registered {pub} as site {site} → node {node}", highlight=False)


@keys_app.command("list")
def keys_list(
    superlink: Control = f"127.0.0.1:{CONTROL_PORT}",
    root_certificates: RootCert = Path("certs/ca.crt"),
    insecure: Insecure = False,
) -> None:
    """Registered and connected sites: site name, node id, status, last online / offline."""
    conn = _connection(superlink, root_certificates, insecure)
    try:
        nodes = registered_nodes(conn)
    except RuntimeError as exc:
        _fail(str(exc), code=1)
    table = Table("site", "node id", "status", "online at", "offline at")
    for n in sorted(nodes, key=lambda n: (n.name or "~", n.node_id)):
        table.add_row(n.name or "(no site: key registered without fedreid)", str(n.node_id), n.status,
                      n.last_activated_at or "—", n.last_deactivated_at or "—")
    console.print(table)


@keys_app.command("unregister")
def keys_unregister(
    sites: Annotated[list[str], typer.Argument(help="Site names to remove from the federation.")],
    superlink: Control = f"127.0.0.1:{CONTROL_PORT}",
    root_certificates: RootCert = Path("certs/ca.crt"),
    insecure: Insecure = False,
) -> None:
    """Revoke sites' keys: they can no longer join (re-register a key to bring one back)."""
    conn = _connection(superlink, root_certificates, insecure)
    nodes = {site: node for node, site in _sites_by_node(conn).items()}
    unknown = [s for s in sites if s not in nodes]
    if unknown:
        _fail(f"no registered key for {', '.join(unknown)}; `fedreid keys list {_control_hint(conn)}` "
              "shows the registered sites")
    with run_status.flwr_cli_env(conn) as env:
        for site in sites:
            try:
                run_status.unregister_node(nodes[site], env)
            except RuntimeError as exc:
                _fail(str(exc), code=1)
            console.print(f"unregistered site {site} (node {nodes[site]})", highlight=False)


# ---- coordinator -------------------------------------------------------------------------
def _tls_files(certs_dir: Path, certfile: Path | None, keyfile: Path | None,
               ca_certfile: Path | None) -> certs_mod.TlsFiles:
    explicit = (certfile, keyfile, ca_certfile)
    if any(explicit):
        if not all(explicit):
            _fail("pass all of --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile, or none of them "
                  "(then --certs is used)")
        for flag, path in zip(("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile"), explicit, strict=True):
            if not Path(path).is_file():
                _fail(f"{flag} {path} does not exist")
        return certs_mod.TlsFiles(ca_certfile, certfile, keyfile)  # type: ignore[arg-type]
    try:
        return certs_mod.TlsFiles.in_folder(certs_dir)
    except ValueError as exc:
        _fail(str(exc))
        raise


def _check_certificate(tls: certs_mod.TlsFiles, host: str) -> None:
    names = certs_mod.certificate_hosts(tls.server_cert)
    missing = [h for h in certs_mod.LOOPBACK_HOSTS if h not in names]
    if missing:
        _fail(f"the server certificate {tls.server_cert} lacks {', '.join(missing)}: the proxy and the "
              "ServerApp reach the SuperLink over loopback. Re-issue it with `fedreid certs --host ...` "
              "(loopback names are added)")
    if host not in ("0.0.0.0", "::") and host not in names:
        _warn(f"--host {host} is not in the server certificate ({', '.join(names)}); sites "
              "connecting by that name will fail the TLS check")


def _start_proxy(plan: proxy.ProxyPlan, env: dict[str, str], dry_run: bool) -> None:
    """Check the config, then start nginx tied to this process (it ends with the SuperLink)."""
    conf = proxy.write_config(plan)
    try:
        test_cmd, cmd = proxy.nginx_command(conf, test=True), proxy.nginx_command(conf)
    except ValueError as exc:
        if not dry_run:
            _fail(str(exc))
        _warn(str(exc))
        test_cmd, cmd = [], proxy.nginx_command(conf, binary="nginx")
    _show(cmd)
    if dry_run:
        return
    check = subprocess.run(test_cmd, env=env, capture_output=True, text=True, check=False)
    if check.returncode != 0:
        _fail(f"nginx rejects {conf}: {(check.stderr or check.stdout).strip()}")
    nginx = processes.start_tied(cmd, env=env)
    try:
        processes.wait_for(lambda: not processes.port_free(plan.host, plan.port), 10,
                           f"the proxy on {plan.host}:{plan.port}", proc=nginx)
    except (RuntimeError, TimeoutError) as exc:
        _fail(f"{exc}; nginx's message is above")


@server_app.command("start")
def server_start(
    host: Annotated[str, typer.Option(help="Interface the sites reach (0.0.0.0 = all; 127.0.0.1 = this machine only).")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="The public port: the sites' Fleet API, through the proxy.")] = DEFAULT_PORT,
    control_port: Annotated[int, typer.Option(help="The SuperLink's own port on 127.0.0.1: runs, keys, the ServerApp.")] = CONTROL_PORT,
    certs_dir: Annotated[Path, typer.Option("--certs", help="Folder with ca.crt, server.pem, server.key.")] = Path("certs"),
    ssl_certfile: Annotated[Path | None, typer.Option(help="Server certificate (overrides --certs).")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="Server private key (overrides --certs).")] = None,
    ssl_ca_certfile: Annotated[Path | None, typer.Option(help="CA certificate (overrides --certs).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="No TLS: plain HTTP. Tests on a trusted network only.")] = False,
    database: Annotated[Path, typer.Option(help="SuperLink state (sites, runs, registered keys); keep it across restarts.")] = Path("coordinator/superlink.db"),
    enable_supernode_auth: Annotated[bool, typer.Option("--enable-supernode-auth", help="Admit only sites whose key was registered (`fedreid keys register`).")] = False,
    log_file: Annotated[Path | None, typer.Option(help="Also write the SuperLink log here (rotated daily).")] = None,
    flwr_home: Annotated[Path | None, typer.Option(help="Flower's folder for installed apps (default: .flwr beside --database).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the nginx and flower-superlink commands and exit.")] = False,
) -> None:
    """Start the coordinator: the proxy on the public port, the SuperLink on loopback (TLS by
    default, persistent database)."""
    tls = None if insecure else _tls_files(certs_dir, ssl_certfile, ssl_keyfile, ssl_ca_certfile)
    if insecure:
        _warn("--insecure: TLS is off. Model updates travel in clear text and sites cannot tell the "
              "real coordinator from an impostor. Use it only for tests on a trusted network.")
        if enable_supernode_auth:
            _fail("--enable-supernode-auth needs TLS; drop --insecure")
    if tls is not None:
        _check_certificate(tls, host)
    if not enable_supernode_auth and not insecure:
        _warn("SuperNode authentication is off: any site that trusts ca.crt can join, under any site "
              "name. Add --enable-supernode-auth and register site keys for a real deployment.")
    if port == control_port:
        _fail(f"--port and --control-port are both {port}; the public and the loopback port must differ")
    database = database.resolve()
    database.parent.mkdir(parents=True, exist_ok=True)
    try:
        processes.check_port(port)
        processes.check_port(control_port, "--control-port")
        cmd = processes.superlink_command(host=proxy.LOOPBACK, port=control_port, database=database, tls=tls,
                                          supernode_auth=enable_supernode_auth, log_file=log_file)
    except ValueError as exc:
        _fail(str(exc))
    if not dry_run:
        for where, flag in (((host, port), "--port"), ((proxy.LOOPBACK, control_port), "--control-port")):
            if not processes.port_free(*where):
                _fail(f"{flag}: {where[0]}:{where[1]} is in use (another coordinator?); stop it or pick another port")
    env = processes.flower_env(flwr_home or database.parent / ".flwr")
    scheme = "http" if insecure else "https"
    _start_proxy(proxy.ProxyPlan(host, port, control_port, tls, database.parent / "proxy"), env, dry_run)
    console.print(f"sites connect to {scheme}://{host}:{port} (the proxy passes the Fleet API only); runs are "
                  f"submitted on this machine at {proxy.LOOPBACK}:{control_port}; state in {database}",
                  highlight=False)
    _show(cmd)
    if not dry_run:
        os.execve(cmd[0], cmd, env)


def _new_run_name() -> str:
    return f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _run_config(overrides: list[str], config: Path | None, sites: str | None, run_dir: Path,
                resume: Path | None, bound: dict[int, str]) -> FedReIDConfig:
    extra = [f"run_dir={run_dir.resolve()}"]
    if sites:
        names = [s.strip() for s in sites.split(",") if s.strip()]
        for name in names:
            try:
                certs_mod.check_site_name(name)
            except ValueError as exc:
                _fail(f"--sites: {exc}")
        extra.append(f"data.sites=[{','.join(names)}]")
    if resume is not None:
        if config is not None:
            _fail("--resume reuses the run's own config.yaml; drop --config (overrides still apply)")
        if not (resume / "config.yaml").is_file():
            _fail(f"--resume {resume}: no config.yaml there; pass the run folder printed by "
                  "`fedreid server run` (runs/<run name>) on the coordinator machine")
        config = resume / "config.yaml"
    extra.append(f"fl.bound_sites=[{','.join(f'{n}={s}' for n, s in sorted(bound.items()))}]")
    try:
        cfg = load_config([*overrides, *extra], config)
        if not cfg.fl.run_name:  # a new run, or a folder written before runs had names
            cfg = load_config([*overrides, *extra, f"fl.run_name={resume.name if resume else _new_run_name()}"],
                              config)
        return cfg
    except ConfigError as exc:
        _fail(str(exc))
        raise


def _check_bindings(cfg: FedReIDConfig, bound: dict[int, str], conn: run_status.Connection) -> None:
    if not bound:
        _warn("no site key is registered with a site name: each node's claimed site is trusted (is the "
              "coordinator running without --enable-supernode-auth?)")
        return
    unbound = [s for s in cfg.data.sites if s not in bound.values()]
    if unbound:
        _warn(f"no registered key for {', '.join(unbound)}: those sites cannot take part; register them "
              f"with `fedreid keys register <site>.pub {_control_hint(conn)}`")


def _timestamped(line: str) -> None:
    console.print(f"{time.strftime('%H:%M:%S')} {line}", markup=False, highlight=False)


@server_app.command("run")
def server_run(
    overrides: Annotated[list[str] | None, typer.Argument(help="Config overrides, key=value (see `fedreid config`).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file merged over the defaults.")] = None,
    superlink: Control = f"127.0.0.1:{CONTROL_PORT}",
    root_certificates: RootCert = Path("certs/ca.crt"),
    insecure: Insecure = False,
    sites: Annotated[str | None, typer.Option(help="Comma-separated site names taking part (data.sites); only they are admitted.")] = None,
    run_dir: Annotated[Path, typer.Option(help="Results folder on the coordinator; the run writes <run-dir>/<run name>/.")] = Path("runs"),
    resume: Annotated[Path | None, typer.Option(help="Run folder of a crashed or stopped run: continue after its last committed round.")] = None,
    app: Annotated[Path | None, typer.Option(help="The fedreid app folder to submit (default: this checkout, or one written for the installed package).")] = None,
    timeout: Annotated[float, typer.Option(help="Stop the run after this many seconds (0 = wait for its end).")] = 0.0,
) -> None:
    """Submit the fedreid app to the SuperLink, follow it, exit non-zero unless it completed."""
    conn = _connection(superlink, root_certificates, insecure)
    resume_dir = resume.resolve() if resume is not None else None
    _run_config(list(overrides or []), config, sites, run_dir, resume_dir, {})  # bad input fails first
    bound = _sites_by_node(conn)
    cfg = _run_config(list(overrides or []), config, sites, run_dir, resume_dir, bound)
    _check_bindings(cfg, bound, conn)
    if app is not None and "[tool.flwr.app]" not in ((app / "pyproject.toml").read_text()
                                                     if (app / "pyproject.toml").is_file() else ""):
        _fail(f"--app {app} is not a Flower app (no pyproject.toml with [tool.flwr.app]); pass "
              "the fedreid checkout or leave --app out")
    if resume_dir is not None and not (resume_dir / "checkpoints" / "latest.pt").exists():
        _warn(f"{resume_dir} has no committed round yet: the run starts from round 1 in that folder")
    folder = resume_dir or Path(cfg.run_dir) / cfg.fl.run_name
    with tempfile.TemporaryDirectory(prefix="fedreid-run-") as tmp, run_status.flwr_cli_env(conn) as env:
        app_dir = (app or flower_app_dir(Path(tmp))).resolve()
        run_config = Path(tmp) / "run-config.toml"
        extra = {"fl.resume_dir": str(resume_dir)} if resume_dir is not None else None
        run_config.write_text(run_config_toml(cfg, extra=extra))
        try:
            run_id = run_status.submit_run(app_dir, run_config, env)
        except RuntimeError as exc:
            _fail(f"{exc}\nIs the coordinator running (`fedreid server start`) with its control port at "
                  f"{superlink}, and is this its CA certificate?", code=1)
        console.print(f"run {run_id} ({cfg.fl.run_name}) started: {len(cfg.data.sites)} site(s) "
                      f"({', '.join(cfg.data.sites)}), {cfg.fl.rounds} round(s); results in {folder}",
                      highlight=False)
        try:
            info = run_status.follow_run(run_id, env, echo=lambda s: console.print(s, markup=False, highlight=False),
                                         record_echo=_timestamped, metrics_file=folder / "metrics.jsonl",
                                         timeout=timeout)
        except TimeoutError as exc:
            _fail(f"{exc}; continue it with `fedreid server run --resume {folder} {_control_hint(conn)}`", code=3)
        except RuntimeError as exc:
            _fail(f"lost contact with the SuperLink during run {run_id}: {exc}\nIf the coordinator "
                  "crashed, restart it (`fedreid server start`, same --database) and continue with "
                  f"`fedreid server run --resume {folder} {_control_hint(conn)}`", code=1)
    status = str(info.get("status"))
    if status != run_status.COMPLETED:
        details = str(info.get("status-details") or "").removeprefix("ServerApp failed with exception: ")
        what = "was stopped" if status.endswith("stopped") else f"failed: {details}" if details else f"ended as {status}"
        _fail(f"run {run_id} {what}\nWhole log (with the traceback): `fedreid server log {run_id} "
              f"{_control_hint(conn)}`; continue it with `fedreid server run --resume {folder} "
              f"{_control_hint(conn)}`", code=1)
    console.print(f"run {run_id} completed in {float(info.get('elapsed', 0)):.0f} s; results in {folder}",
                  highlight=False)


@server_app.command("log")
def server_log(
    run_id: Annotated[int, typer.Argument(help="The run id `fedreid server run` printed.")],
    superlink: Control = f"127.0.0.1:{CONTROL_PORT}",
    root_certificates: RootCert = Path("certs/ca.crt"),
    insecure: Insecure = False,
) -> None:
    """Print a run's whole log (the ServerApp's output, tracebacks included)."""
    text = _control_call(_connection(superlink, root_certificates, insecure),
                         lambda env: run_status.show_log(run_id, env))
    console.print(text, markup=False, highlight=False, end="")


@server_app.command("stop")
def server_stop(
    run_id: Annotated[int, typer.Argument(help="The run id `fedreid server run` printed.")],
    superlink: Control = f"127.0.0.1:{CONTROL_PORT}",
    root_certificates: RootCert = Path("certs/ca.crt"),
    insecure: Insecure = False,
) -> None:
    """Stop a run. Its sites keep their state of the last committed round; `--resume` continues it."""
    _control_call(_connection(superlink, root_certificates, insecure),
                  lambda env: run_status.stop_run(run_id, env))
    console.print(f"run {run_id} stopped", highlight=False)


def _control_call(conn: run_status.Connection, action: Callable[[dict[str, str]], T]) -> T:
    """``action(env)`` with Flower's CLI pointed at the coordinator; its failure (an error
    from Flower's CLI, or no answer in time) ends the command with the reason."""
    with run_status.flwr_cli_env(conn) as env:
        try:
            return action(env)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            _fail(str(exc), code=1)


# ---- sites -------------------------------------------------------------------------------
@site_app.command("check")
def site_check(
    data: Annotated[Path, typer.Argument(help="This site's data folder.")],
    dataset: Annotated[str, typer.Option(help="Reader name, e.g. fedreid, market1501.")] = "fedreid",
    seed: Annotated[int, typer.Option(help="Seed of the split rule for sets without public splits.")] = 0,
) -> None:
    """Validate the site's data (every problem in one pass) and state what will — and will
    never — leave the site."""
    from fedreid.data.check import check_dataset, render_check_report

    try:
        report = check_dataset(data, dataset, seed=seed)
    except DataError:
        problems = find_problems(data, dataset, seed=seed)
        for line in problems[:SHOWN_PROBLEMS]:
            _error(line)
        more = len(problems) - SHOWN_PROBLEMS
        _fail(f"{data}: {len(problems)} problem(s)" + (f"; the first {SHOWN_PROBLEMS} are shown, "
              f"{more} more" if more > 0 else "") + "; fix them and check again", code=1)
    except ValueError as exc:
        _fail(str(exc), code=1)
    console.print(render_check_report(report))
    console.print("\n[bold]Sent to the coordinator each round:[/]")
    for line in sharing.SHARED:
        console.print(f"  + {line}", highlight=False)
    console.print("[bold]Never leaves this site:[/]")
    for line in sharing.NEVER_SHARED:
        console.print(f"  - {line}", highlight=False)


class _SupernodeWatch:
    """Reads the SuperNode's output for failures Flower does not explain, and explains them."""

    def __init__(self, site: str, superlink: str, root_certificates: Path | None, key: Path | None):
        self.site, self.superlink, self.root_certificates, self.key = site, superlink, root_certificates, key
        self.last_probe = 0.0
        self.mismatch: str | None = None
        self.unregistered = False

    def __call__(self, line: str) -> bool:
        if not self.unregistered and ("Failed to activate SuperNode" in line or "Exit Code: 305" in line):
            self.unregistered = True
            return False
        retrying = "Connection attempt failed" in line
        if (retrying and time.monotonic() - self.last_probe >= PROBE_EVERY_S) or "SSL/TLS handshake error" in line:
            self.last_probe = time.monotonic()
            self.mismatch = protocol_problem(self.superlink, self.root_certificates)
            if self.mismatch:
                _error(f"{self.superlink}: {self.mismatch}")
                return True
        return False


def _audit_gate(data: Path) -> None:
    """Refuse to join while the site's data audit (policy block) has unsettled findings."""
    from fedreid.audit.gate import ack_path, join_blockers

    blockers = join_blockers(data)
    if not blockers:
        return
    for line in blockers[:SHOWN_PROBLEMS]:
        _error(line)
    more = len(blockers) - SHOWN_PROBLEMS
    _fail(f"{data}: the data audit (policy block) has {len(blockers)} unresolved finding(s)"
          + (f" ({more} more not shown)" if more > 0 else "") + "; this site may not join until each is "
          f"resolved (redact or delete the image) or acknowledged with a reason in {ack_path(data)} "
          f"(see the audit report), then start it again. `fedreid site audit {data} --policy block` "
          "audits again after changes", code=1)


@site_app.command("join")
def site_join(
    site: Annotated[str, typer.Option(help="This site's name (as registered for its key and listed in the run's --sites).")],
    data: Annotated[Path, typer.Option(help="This site's data folder.")],
    superlink: Annotated[str, typer.Option(help="Coordinator address HOST:PORT (its public port, 9092).")],
    root_certificates: RootCert = Path("certs/ca.crt"),
    key: Annotated[Path | None, typer.Option(
        "--key", "--auth-supernode-private-key",
        help="This site's private key (`fedreid keys create`): its identity across restarts.")] = None,
    insecure: Insecure = False,
    dataset: Annotated[str, typer.Option(help="Reader name of the data folder.")] = "fedreid",
    method: Annotated[str | None, typer.Option(help="This site's method, a name in `fedreid config` method.* (default: the run's sites.<site>.method, else method.name).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: the run's).")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for training (default: all cores).")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Private state (mask, CRR backup, head/memory), one folder per run inside (default: site-state/<site>).")] = None,
    runtime_port: Annotated[int, typer.Option(help="Local port between the SuperNode and its ClientApps; unique per site on one machine.")] = 9094,
    max_retries: Annotated[int | None, typer.Option(help="Give up after this many failed connection tries (default: never).")] = None,
    max_wait_time: Annotated[float | None, typer.Option(help="Give up after this many seconds without the coordinator (default: never).")] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Validate the data before joining.")] = True,
    flwr_home: Annotated[Path | None, typer.Option(help="Flower's folder for installed apps (default: <state-dir>/.flwr).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the flower-supernode command and exit.")] = False,
    activation_wait: Annotated[float, typer.Option(help="Seconds to keep retrying while the coordinator refuses this site's key (it does so for about a minute after a node with the key stopped).")] = ACTIVATION_WAIT_S,
) -> None:
    """Run this site's SuperNode: it trains when the coordinator asks, on data that stays here."""
    from fedreid.methods import METHODS

    try:
        certs_mod.check_site_name(site)
        if key is not None:
            certs_mod.check_private_key(key)
    except ValueError as exc:
        _fail(str(exc))
    if insecure and key is not None:
        _fail("--insecure cannot be used with --key: a coordinator authenticates site keys only over TLS. "
              "Drop --insecure and pass --root-certificates ca.crt (or drop --key for a test coordinator "
              "started with --insecure)")
    if not data.is_dir():
        _fail(f"--data {data} is not a folder; pass this site's data folder")
    _audit_gate(data)
    if method is not None and method not in METHODS:
        _fail(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if device is not None and device.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
        _fail(f"--device {device!r} is not auto, cpu, cuda, cuda:N or mps")
    if threads is not None and threads < 1:
        _fail(f"--threads {threads} must be at least 1")
    if activation_wait < 0:
        _fail(f"--activation-wait {activation_wait} must be 0 or more seconds")
    if not insecure and (root_certificates is None or not root_certificates.is_file()):
        _fail(f"--root-certificates {root_certificates} is not a file; copy the federation's ca.crt "
              "here (or --insecure for a test coordinator started with --insecure)")
    trust = None if insecure else root_certificates
    if insecure:
        _warn("--insecure: the model updates of this site travel unencrypted")
    if key is None:
        _warn("no --key: this site gets a new identity at every start and cannot join a coordinator "
              "that authenticates sites")
    if check:
        from fedreid.data.check import check_dataset

        try:
            report = check_dataset(data, dataset)
        except (DataError, ValueError) as exc:
            _fail(f"{exc} (`fedreid site check {data}` lists every problem; or skip the check with --no-check)",
                  code=1)
        console.print(f"data ok: {report['images']} images of {report['identities']} identities",
                      highlight=False)
    state = (state_dir or Path("site-state") / site).resolve()
    state.mkdir(parents=True, exist_ok=True)
    node_config: dict[str, processes.NodeValue] = {"site": site, "data-root": str(data.resolve()),
                                                   "dataset": dataset, "state-dir": str(state)}
    for name, value in (("method", method), ("device", device), ("num-threads", threads)):
        if value is not None:
            node_config[name] = value
    try:
        cmd = processes.supernode_command(
            superlink=superlink, root_certificates=trust, private_key=key, node_config=node_config,
            runtime_port=runtime_port, max_retries=max_retries, max_wait_time=max_wait_time)
    except ValueError as exc:
        _fail(str(exc))
    if not dry_run:
        try:
            problem = protocol_problem(superlink, trust)
        except ValueError as exc:
            _fail(str(exc))
        if problem:
            _fail(f"{superlink}: {problem}")
    limit = ("forever" if max_retries is None and max_wait_time is None else
             f"up to {max_retries if max_retries is not None else '∞'} tries / "
             f"{max_wait_time if max_wait_time is not None else '∞'} s")
    console.print(f"site {site} → coordinator {superlink}; private state in {state}/<run>. If the "
                  f"coordinator is unreachable the SuperNode retries with exponential backoff "
                  f"({limit}) and logs each try.", highlight=False, soft_wrap=True)
    _show(cmd)
    if dry_run:
        return
    env = processes.flower_env(flwr_home or state / ".flwr")
    env[processes.OWNER_VAR] = processes.owner_tag(state)
    stopped = processes.kill_strays(state)
    if stopped:
        _warn(f"stopped {len(stopped)} process(es) an earlier, killed `site join` of this site left running "
              f"(pids {', '.join(map(str, stopped))}): Flower's SuperExec and ClientApps retry a dead SuperNode "
              "forever")
    if not processes.port_free("127.0.0.1", runtime_port):
        _fail(f"--runtime-port {runtime_port} is in use on this machine (another `site join`, or its SuperNode "
              "still stopping); give each site on one machine its own --runtime-port, e.g. "
              f"--runtime-port {runtime_port + 1}")
    raise typer.Exit(run_supernode(cmd, env, lambda: _SupernodeWatch(site, superlink, trust, key),
                                   activation_wait=activation_wait))


def run_supernode(cmd: list[str], env: dict[str, str], new_watch: Callable[[], _SupernodeWatch], *,
                  activation_wait: float, retry_every: float = ACTIVATION_RETRY_S,
                  sleep: Callable[[float], None] = time.sleep) -> int:
    """Run the SuperNode; while the coordinator refuses to activate its key, start it again
    for up to ``activation_wait`` seconds. A refused key is either unknown to the coordinator
    or still held by a node it counts as connected (one killed less than a minute ago, until
    its heartbeats lapse; a node stopped with Ctrl-C signs off); the second clears by itself, so a restarted site rejoins
    without its operator. Returns the exit code ``site join`` should end with."""
    first_refusal: float | None = None
    while True:
        watch = new_watch()
        code = processes.run_watched(cmd, env=env, on_line=watch)
        if watch.mismatch:
            return 2
        if not watch.unregistered:
            return code
        now = time.monotonic()
        first_refusal = now if first_refusal is None else first_refusal
        pub = watch.key.with_suffix(".pub").name if watch.key else f"{watch.site}.pub"
        if now - first_refusal >= activation_wait:
            _error(f"the coordinator refused to activate this site's key for {now - first_refusal:.0f} s. Either it "
                   f"does not know the key (never registered, or unregistered): on the coordinator run `fedreid "
                   f"keys register {pub}`; or another node with this key is still connected (a second `site join` "
                   f"with it): stop that one. Then start this site again (--activation-wait sets how long to retry)")
            return code or 1
        _warn(f"the coordinator refused to activate this site's key; a node of it killed less than a minute ago "
              f"holds it until its heartbeats lapse, so trying again in {retry_every:.0f} s (for up to "
              f"{activation_wait:.0f} s). If the key was never registered: `fedreid keys register {pub}` on the "
              "coordinator")
        sleep(retry_every)
