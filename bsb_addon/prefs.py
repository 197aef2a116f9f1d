"""Add-on preferences: a Local engine (its Python, models, device, profile) or a Remote one (address, token)."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from . import feedback


class BSB_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    engine_python: StringProperty(
        name="Engine Python", subtype="FILE_PATH",
        description="Python of a venv where the engine is installed (made by 'Set up engine')",
    )
    base_python: StringProperty(
        name="Base Python", subtype="FILE_PATH",
        description="Python 3.10+ used to create the engine venv; empty uses Blender's own Python",
    )
    models_dir: StringProperty(name="Models folder", subtype="DIR_PATH",
                               description="Folder with the SAM checkpoints; empty uses the one the engine's command "
                                           "line uses ($BSB_MODELS_DIR or ~/.cache/bsb/models), kept on uninstall")
    device: EnumProperty(name="Device", default="AUTO", items=[
        ("AUTO", "Auto", "CUDA, then MPS, then CPU"), ("CPU", "CPU", ""), ("CUDA", "CUDA", "NVIDIA GPU"),
        ("MPS", "MPS", "Apple GPU")])
    profile: EnumProperty(name="Profile", default="AUTO", items=[
        ("AUTO", "Auto", "The engine picks by device: Paper on CUDA, Fast on CPU and Apple GPUs"),
        ("FAST", "Fast", "EdgeTAM and DINOv2-S on 24 SAM views: the CPU and Apple GPU default"),
        ("BALANCED", "Balanced", "SAM 2.1-tiny and DINOv2-B on 24 SAM views: slower than Fast on a CPU"),
        ("PAPER", "Paper", "SAM ViT-H and DINOv2-L, the reference's view counts: the CUDA default"),
        ("CPU", "CPU", "SAM ViT-B and DINOv2-B on 4 SAM views (the earlier CPU default)"),
        ("GPU", "GPU", "SAM ViT-H and DINOv2-L on capped view counts (200 SAM views): faster than Paper"),
        ("TINY", "Plumbing check", "Random weights: tests the set-up only, results are meaningless")])
    engine_mode: EnumProperty(name="Engine", default="LOCAL", items=[
        ("LOCAL", "Local", "Run the engine on this computer, as a child process of Blender"),
        ("REMOTE", "Remote", "Use an engine on another machine (python -m engine serve --listen HOST:PORT)")])
    remote_address: StringProperty(name="Address", default="127.0.0.1:8765",
                                   description="HOST:PORT of the remote engine (its --listen)")
    remote_token: StringProperty(name="Token", subtype="PASSWORD",
                                 description="The token the remote engine printed at its first start "
                                             "(kept in its config folder, file remote-token)")
    remote_tls: BoolProperty(name="TLS", default=False,
                             description="Encrypt the connection (the engine runs with --cert and --key)")
    remote_cafile: StringProperty(name="Certificate", subtype="FILE_PATH",
                                  description="The engine's certificate (PEM) when it is self-signed; empty uses "
                                              "the system's certificate authorities")
    keep_engine_alive: BoolProperty(name="Keep engine alive", default=True,
                                    description="Keep models loaded between actions (faster, uses memory)")

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        layout.row().prop(self, "engine_mode", expand=True)
        col = layout.column()
        remote = self.engine_mode == "REMOTE"
        if remote:
            col.prop(self, "remote_address")
            col.prop(self, "remote_token")
            col.prop(self, "remote_tls")
            if self.remote_tls:
                col.prop(self, "remote_cafile")
        else:
            col.prop(self, "engine_python")
            col.prop(self, "models_dir")
            col.prop(self, "device")
            col.prop(self, "profile")
        col.prop(self, "keep_engine_alive")
        if not remote:
            col.prop(self, "base_python")
        job = context.window_manager.bsb_job
        row = layout.row(align=True)
        if not remote:
            row.operator("bsb.setup_engine", icon="IMPORT")
        row.operator("bsb.test_connection", icon="PLUGIN")
        row.operator("bsb.release_engine", icon="X")
        if not remote:
            row.operator("bsb.open_log", icon="TEXT")
        if job.busy and job.kind == "setup":
            row = layout.row(align=True)
            row.progress(text=job.message, factor=job.fraction)
            row.operator("bsb.cancel_job", text="", icon="CANCEL")
        if job.engine_info:
            layout.label(text=job.engine_info, icon="INFO")
        if job.error:
            box = layout.box()
            for line in feedback.wrap(job.error, 90, 8):
                box.label(text=line)
        if not remote:  # a remote engine has its own models, on its own machine
            draw_models(layout.box())


def draw_models(layout) -> None:
    """Each profile's weight files with sizes; Download (with consent) and progress with Cancel."""
    from . import ops_models, session

    row = layout.row()
    row.label(text="Models", icon="FILE_FOLDER")
    row.operator("bsb.models_refresh", text="", icon="FILE_REFRESH")
    layout.label(text=f"Folder (shared with the engine's CLI): {session.models_folder()}")
    if not bpy.app.online_access:
        layout.label(text="Online access is off (Preferences > System): downloads are disabled", icon="INTERNET_OFFLINE")
    listing = ops_models.listing()
    if listing["loading"]:
        layout.label(text="Reading the engine's model list...")
    if listing["error"]:
        for line in feedback.wrap(listing["error"], 90, 3):
            layout.label(text=line, icon="ERROR")
    state = ops_models.download_state()
    if ops_models.downloading():
        row = layout.row(align=True)
        row.progress(text=state["message"], factor=state["fraction"])
        row.operator("bsb.models_cancel", text="", icon="CANCEL")
    elif state.get("error"):
        layout.label(text=state["error"][:200], icon="ERROR")
    elif state.get("message"):
        layout.label(text=state["message"], icon="INFO")
    for profile in (listing["data"] or {}).get("profiles", []):
        col = layout.column(align=True)
        head = col.row()
        head.label(text=f"{profile['name']}: {profile['description']}")
        missing = [f for f in profile["files"] if not f["present"]]
        if missing and not ops_models.downloading():
            size = sum(f["size_mb"] for f in missing)
            head.operator("bsb.models_download", text=f"Download ({size} MB)", icon="IMPORT").profile = profile["name"]
        for f in profile["files"]:
            size = f" ~{f['size_mb']} MB" if f["size_mb"] else ""
            col.label(text=f"    {f['part']}: {f['id']}{size} - {f['where']}",
                      icon="CHECKMARK" if f["present"] else "CANCEL")


classes = (BSB_AddonPreferences,)


def engine_source() -> Path | None:
    """The engine source shipped in the extension zip (engine_src/), or the repository in development."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "engine_src", here.parent):
        if (candidate / "pyproject.toml").is_file() and (candidate / "engine").is_dir():
            return candidate
    return None

