"""`fedreid server|site|keys|certs`: the operator's commands for a real deployment.

``server start`` and ``site join`` validate everything they can, print what they will do,
then *become* the Flower process (exec), so a terminal, systemd or a container supervisor
sees and signals the real SuperLink / SuperNode. ``--dry-run`` prints the command instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import checked_dataset, console
from cli.common import fail as _fail
from fedreid.config import ConfigError, FedReIDConfig, load_config
from fedreid.config.loader import run_config_toml
from fedreid.data.records import DataError
from fedreid.deploy import certs as certs_mod
from fedreid.deploy import processes, run_status, sharing
from fedreid.deploy.flower_app import flower_app_dir

server_app = typer.Typer(help="Coordinator: start the SuperLink, submit and follow runs.",
                         no_args_is_help=True)
site_app = typer.Typer(help="A camera site: check its data, join the federation.", no_args_is_help=True)
keys_app = typer.Typer(help="Site identity keys: create, register with the coordinator, list.",
                       no_args_is_help=True)

DEFAULT_PORT = 9092
Superlink = Annotated[str, typer.Option(help="Coordinator address HOST:PORT (the SuperLink).")]
RootCert = Annotated[Path | None, typer.Option(
    "--root-certificates", help="The federation's CA certificate (ca.crt from `fedreid certs`).")]
Insecure = Annotated[bool, typer.Option(
    "--insecure", help="Talk plain HTTP to a SuperLink started with --insecure (tests only).")]


def _warn(message: str) -> None:
    console.print(f"[bold yellow]warning:[/] {message}", highlight=False)


def _exec(cmd: list[str], env: dict[str, str], dry_run: bool) -> None:
    """Replace this process with ``cmd`` (or just print it)."""
    console.print("$ " + " ".join(cmd), markup=False, highlight=False, soft_wrap=True)
    if dry_run:
        return
    os.execve(cmd[0], cmd, env)


def _connection(superlink: str, root_certificates: Path | None, insecure: bool) -> run_status.Connection:
    try:
        return run_status.check_connection(superlink, root_certificates, insecure)
    except ValueError as exc:
        _fail(str(exc))


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
    public_keys: Annotated[list[Path], typer.Argument(help="Sites' .pub files.")],
    superlink: Superlink = f"127.0.0.1:{DEFAULT_PORT}",
    root_certificates: RootCert = Path("certs/ca.crt"),
) -> None:
    """Allow sites to join a SuperLink started with --enable-supernode-auth."""
    conn = _connection(superlink, root_certificates, insecure=False)
    for pub in public_keys:
        try:
            certs_mod.check_public_key(pub)
        except ValueError as exc:
            _fail(str(exc))
    with run_status.flwr_cli_env(conn) as env:
        for pub in public_keys:
            try:
                node = run_status.register_key(pub, pub.stem, env)
            except RuntimeError as exc:
                _fail(f"{pub}: {exc}", code=1)
            console.print(f"registered {pub} → node {node}", highlight=False)


@keys_app.command("list")
def keys_list(
    superlink: Superlink = f"127.0.0.1:{DEFAULT_PORT}",
    root_certificates: RootCert = Path("certs/ca.crt"),
    insecure: Insecure = False,
) -> None:
    """Registered and connected sites (node id, status, last online)."""
    conn = _connection(superlink, root_certificates, insecure)
    with run_status.flwr_cli_env(conn) as env:
        try:
            nodes = run_status.list_nodes(env)
        except RuntimeError as exc:
            _fail(str(exc), code=1)
    table = Table("node id", "status", "online at", "offline at")
    for n in nodes:
        table.add_row(str(n.get("node-id")), str(n.get("status")), str(n.get("online-at")),
                      str(n.get("offline-at")))
    console.print(table)


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


@server_app.command("start")
def server_start(
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 = all; 127.0.0.1 = this machine only).")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="The one port sites, `fedreid server run` and the ServerApp use.")] = DEFAULT_PORT,
    certs_dir: Annotated[Path, typer.Option("--certs", help="Folder with ca.crt, server.pem, server.key.")] = Path("certs"),
    ssl_certfile: Annotated[Path | None, typer.Option(help="Server certificate (overrides --certs).")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="Server private key (overrides --certs).")] = None,
    ssl_ca_certfile: Annotated[Path | None, typer.Option(help="CA certificate (overrides --certs).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="No TLS: plain HTTP. Tests on a trusted network only.")] = False,
    database: Annotated[Path, typer.Option(help="SuperLink state (sites, runs, registered keys); keep it across restarts.")] = Path("coordinator/superlink.db"),
    enable_supernode_auth: Annotated[bool, typer.Option("--enable-supernode-auth", help="Admit only sites whose key was registered (`fedreid keys register`).")] = False,
    log_file: Annotated[Path | None, typer.Option(help="Also write the SuperLink log here (rotated daily).")] = None,
    flwr_home: Annotated[Path | None, typer.Option(help="Flower's folder for installed apps (default: .flwr beside --database).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the flower-superlink command and exit.")] = False,
) -> None:
    """Start the coordinator's SuperLink (TLS by default, persistent database)."""
    tls = None if insecure else _tls_files(certs_dir, ssl_certfile, ssl_keyfile, ssl_ca_certfile)
    if insecure:
        _warn("--insecure: TLS is off. Model updates travel in clear text and sites cannot tell the "
              "real coordinator from an impostor. Use it only for tests on a trusted network.")
        if enable_supernode_auth:
            _fail("--enable-supernode-auth needs TLS; drop --insecure")
    if tls is not None and host not in ("0.0.0.0", "::"):
        names = certs_mod.certificate_hosts(tls.server_cert)
        if host not in names:
            _warn(f"--host {host} is not in the server certificate ({', '.join(names)}); sites "
                  "connecting by that name will fail the TLS check")
    if not enable_supernode_auth and not insecure:
        _warn("SuperNode authentication is off: any site that trusts ca.crt can join. Add "
              "--enable-supernode-auth and register site keys for a real deployment.")
    database = database.resolve()
    database.parent.mkdir(parents=True, exist_ok=True)
    try:
        cmd = processes.superlink_command(host=host, port=port, database=database, tls=tls,
                                          supernode_auth=enable_supernode_auth, log_file=log_file)
    except ValueError as exc:
        _fail(str(exc))
    env = processes.flower_env(flwr_home or database.parent / ".flwr")
    console.print(f"SuperLink on {'https' if tls else 'http'}://{host}:{port}, state in {database}",
                  highlight=False)
    _exec(cmd, env, dry_run)


def _run_config(overrides: list[str], config: Path | None, sites: str | None, run_dir: Path,
                resume: Path | None) -> FedReIDConfig:
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
                  "`fedreid server run` (runs/flwr-<run id>) on the coordinator machine")
        config = resume / "config.yaml"
    try:
        return load_config([*overrides, *extra], config)
    except ConfigError as exc:
        _fail(str(exc))
        raise


@server_app.command("run")
def server_run(
    overrides: Annotated[list[str] | None, typer.Argument(help="Config overrides, key=value (see `fedreid config`).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file merged over the defaults.")] = None,
    superlink: Superlink = f"127.0.0.1:{DEFAULT_PORT}",
    root_certificates: RootCert = Path("certs/ca.crt"),
    insecure: Insecure = False,
    sites: Annotated[str | None, typer.Option(help="Comma-separated site names taking part (data.sites); each round waits for them.")] = None,
    run_dir: Annotated[Path, typer.Option(help="Results folder on the coordinator; the run writes <run-dir>/flwr-<run id>/.")] = Path("runs"),
    resume: Annotated[Path | None, typer.Option(help="Run folder of a crashed run: continue at its next unfinished round.")] = None,
    app: Annotated[Path | None, typer.Option(help="The fedreid app folder to submit (default: this checkout, or one written for the installed package).")] = None,
    timeout: Annotated[float, typer.Option(help="Stop the run after this many seconds (0 = wait for its end).")] = 0.0,
) -> None:
    """Submit the fedreid app to the SuperLink, follow it, exit non-zero unless it completed."""
    conn = _connection(superlink, root_certificates, insecure)
    resume_dir = resume.resolve() if resume is not None else None
    cfg = _run_config(list(overrides or []), config, sites, run_dir, resume_dir)
    if app is not None and "[tool.flwr.app]" not in ((app / "pyproject.toml").read_text()
                                                     if (app / "pyproject.toml").is_file() else ""):
        _fail(f"--app {app} is not a Flower app (no pyproject.toml with [tool.flwr.app]); pass "
              "the fedreid checkout or leave --app out")
    if resume_dir is not None and not (resume_dir / "checkpoints" / "latest.pt").exists():
        _warn(f"{resume_dir} has no finished round yet: the run starts from round 1 in that folder")
    with tempfile.TemporaryDirectory(prefix="fedreid-run-") as tmp, run_status.flwr_cli_env(conn) as env:
        app_dir = (app or flower_app_dir(Path(tmp))).resolve()
        run_config = Path(tmp) / "run-config.toml"
        extra = {"fl.resume_dir": str(resume_dir)} if resume_dir is not None else None
        run_config.write_text(run_config_toml(cfg, extra=extra))
        try:
            run_id = run_status.submit_run(app_dir, run_config, env)
        except RuntimeError as exc:
            _fail(f"{exc}\nIs the SuperLink running at {superlink}, and is this its CA certificate?",
                  code=1)
        folder = resume_dir or Path(cfg.run_dir) / f"flwr-{run_id}"
        console.print(f"run {run_id} started on {superlink}: {len(cfg.data.sites)} site(s) "
                      f"({', '.join(cfg.data.sites)}), {cfg.fl.rounds} round(s); results in {folder}",
                      highlight=False)
        try:
            info = run_status.follow_run(run_id, env, echo=lambda s: console.print(s, markup=False, highlight=False),
                                         metrics_file=folder / "metrics.jsonl", timeout=timeout)
        except TimeoutError as exc:
            _fail(str(exc), code=3)
        except RuntimeError as exc:
            _fail(f"lost contact with the SuperLink during run {run_id}: {exc}\nIf the coordinator "
                  "crashed, restart it (`fedreid server start`, same --database) and continue with "
                  f"`fedreid server run --resume {folder}`", code=1)
    status = info.get("status")
    if status != run_status.COMPLETED:
        _fail(f"run {run_id} ended as {status}: {info.get('status-details')}. Its log: "
              f"`flwr log {run_id}`; resume with `fedreid server run --resume {folder}`", code=1)
    console.print(f"run {run_id} completed in {float(info.get('elapsed', 0)):.0f} s; results in {folder}",
                  highlight=False)


# ---- sites -------------------------------------------------------------------------------
@site_app.command("check")
def site_check(
    data: Annotated[Path, typer.Argument(help="This site's data folder.")],
    dataset: Annotated[str, typer.Option(help="Reader name, e.g. fedreid, market1501.")] = "fedreid",
    seed: Annotated[int, typer.Option(help="Seed of the split rule for sets without public splits.")] = 0,
) -> None:
    """Validate the site's data and state what will — and will never — leave the site."""
    from fedreid.data.check import render_check_report

    report = checked_dataset(data, dataset, seed)
    console.print(render_check_report(report))
    console.print("\n[bold]Sent to the coordinator each round:[/]")
    for line in sharing.SHARED:
        console.print(f"  + {line}", highlight=False)
    console.print("[bold]Never leaves this site:[/]")
    for line in sharing.NEVER_SHARED:
        console.print(f"  - {line}", highlight=False)


@site_app.command("join")
def site_join(
    site: Annotated[str, typer.Option(help="This site's name (as listed in the run's data.sites).")],
    data: Annotated[Path, typer.Option(help="This site's data folder.")],
    superlink: Annotated[str, typer.Option(help="Coordinator address HOST:PORT.")],
    root_certificates: RootCert = Path("certs/ca.crt"),
    key: Annotated[Path | None, typer.Option(
        "--key", "--auth-supernode-private-key",
        help="This site's private key (`fedreid keys create`): its identity across restarts.")] = None,
    insecure: Insecure = False,
    dataset: Annotated[str, typer.Option(help="Reader name of the data folder.")] = "fedreid",
    method: Annotated[str | None, typer.Option(help="This site's method, a name in `fedreid config` method.* (default: the run's sites.<site>.method, else method.name).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: the run's).")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Private state (mask, CRR backup, head/memory) (default: site-state/<site>).")] = None,
    runtime_port: Annotated[int, typer.Option(help="Local port between the SuperNode and its ClientApps; unique per site on one machine.")] = 9094,
    max_retries: Annotated[int | None, typer.Option(help="Give up after this many failed connection tries (default: never).")] = None,
    max_wait_time: Annotated[float | None, typer.Option(help="Give up after this many seconds without the coordinator (default: never).")] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Validate the data before joining.")] = True,
    flwr_home: Annotated[Path | None, typer.Option(help="Flower's folder for installed apps (default: <state-dir>/.flwr).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the flower-supernode command and exit.")] = False,
) -> None:
    """Start this site's SuperNode: it trains when the coordinator asks, on data that stays here."""
    from fedreid.methods import METHODS

    try:
        certs_mod.check_site_name(site)
        if key is not None:
            certs_mod.check_private_key(key)
    except ValueError as exc:
        _fail(str(exc))
    if not data.is_dir():
        _fail(f"--data {data} is not a folder; pass this site's data folder")
    if method is not None and method not in METHODS:
        _fail(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if device is not None and device.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
        _fail(f"--device {device!r} is not auto, cpu, cuda, cuda:N or mps")
    if not insecure and (root_certificates is None or not root_certificates.is_file()):
        _fail(f"--root-certificates {root_certificates} is not a file; copy the federation's ca.crt "
              "here (or --insecure for a test SuperLink started with --insecure)")
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
            _fail(f"{exc} (or skip the check with --no-check)", code=1)
        console.print(f"data ok: {report['images']} images of {report['identities']} identities",
                      highlight=False)
    state = (state_dir or Path("site-state") / site).resolve()
    state.mkdir(parents=True, exist_ok=True)
    node_config = {"site": site, "data-root": str(data.resolve()), "dataset": dataset,
                   "state-dir": str(state)}
    if method is not None:
        node_config["method"] = method
    if device is not None:
        node_config["device"] = device
    try:
        cmd = processes.supernode_command(
            superlink=superlink, root_certificates=None if insecure else root_certificates,
            private_key=key, node_config=node_config, runtime_port=runtime_port,
            max_retries=max_retries, max_wait_time=max_wait_time)
    except ValueError as exc:
        _fail(str(exc))
    limit = ("forever" if max_retries is None and max_wait_time is None else
             f"up to {max_retries if max_retries is not None else '∞'} tries / "
             f"{max_wait_time if max_wait_time is not None else '∞'} s")
    console.print(f"site {site} → coordinator {superlink}; private state in {state}. If the "
                  f"coordinator is unreachable the SuperNode retries with exponential backoff "
                  f"({limit}) and logs each try.", highlight=False, soft_wrap=True)
    _exec(cmd, processes.flower_env(flwr_home or state / ".flwr"), dry_run)
