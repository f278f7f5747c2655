//! `app.*` (app-service): installs on a device, and catalog or per-device updates.

use super::Content;
use crate::pb::{self, event::Payload};
use crate::schema::DecodeError;
use crate::schema::fields::Fields;
use crate::schema::json_struct;

/// The spellings of the app id: `publishAppEvent` writes `applicationId`, other calls `appId`.
const APP_ID: &[&str] = &["applicationId", "appId"];

/// The spellings of an install failure's text, in order of preference.
const ERROR_TEXT: &[&str] = &["error", "errorMessage", "reason"];

/// `app.installed` (also published as `app.install.completed`).
pub(super) fn installed(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    let payload = pb::AppInstalled {
        installation_id: fields.text("installationId")?,
        app_id: fields.required_string(fields.alias(APP_ID))?,
        app_name: fields.text("appName")?,
        device_name: fields.text("deviceName")?,
        version: fields.text("version")?,
    };
    Ok(Content::dated(
        Payload::AppInstalled(payload),
        fields.date("installedAt")?,
    ))
}

/// `app.install_failed` (also published as `app.install.failed`). The catalog names the id
/// `appId` here, so a missing id is reported under that name.
pub(super) fn install_failed(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    let payload = pb::AppInstallFailed {
        installation_id: fields.text("installationId")?,
        app_id: fields.required_string(fields.alias(&["appId", "applicationId"]))?,
        app_name: fields.text("appName")?,
        device_name: fields.text("deviceName")?,
        error: fields.text(fields.alias(ERROR_TEXT))?,
    };
    Ok(Content::dated(
        Payload::AppInstallFailed(payload),
        fields.date("failedAt")?,
    ))
}

/// `app.updated`, in either form. Both fill the one message; only the catalog form requires the
/// app id, because the per-device form identifies the app by name on a device.
pub(super) fn updated(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    let app_id_field = fields.alias(&["appId", "applicationId"]);
    let per_device = fields.get("deviceId").is_some();
    let app_id = if per_device {
        fields.text(app_id_field)?
    } else {
        fields.required_string(app_id_field)?
    };
    let payload = pb::AppUpdated {
        app_id,
        package_name: fields.text("packageName")?,
        version_name: fields.text("versionName")?,
        updated_fields: fields.strings("updatedFields")?,
        old_values: fields
            .raw_object("oldValues")?
            .map(json_struct::from_object),
        new_values: fields
            .raw_object("newValues")?
            .map(json_struct::from_object),
        app_name: fields.text("appName")?,
        old_version: fields.text("oldVersion")?,
        new_version: fields.text("newVersion")?,
    };
    Ok(Content::dated(
        Payload::AppUpdated(payload),
        fields.date("updatedAt")?,
    ))
}
